"""`diffode <command> [hydra overrides...]`: one console entry for every job.

    diffode train  [method=<name>] [overrides]  train any method through one runner: a denoiser
                                                (default), ld3, amed, gits, progressive_distillation,
                                                consistency_distillation (conf/method/)
    diffode <method> [overrides]                the same as `diffode train method=<method> ...`
    diffode eval   [solver=.. grid=.. nfe=..]   FID / RMSE vs NFE of solvers x grids and learned samplers
    diffode main                                the built-in study (README's first command)
    diffode report [the run's overrides] output_dir=<run dir>
                                                rewrite a finished eval's report.md and figures from
                                                its results.csv (no cell is sampled again)
    diffode fetch-weights inception|lpips-vgg|lpips-alex|all
                                                download pretrained weights into the torch cache
                                                (on a machine with internet)

Bad configs stop before any compute with one paragraph naming the fix (HYDRA_FULL_ERROR=1 shows the
traceback). Hydra flags work as usual: -m (multirun), --cfg job, --help. `diffode-train` and `diffode-eval`
are `diffode train` / `diffode eval` as commands of their own, for Hydra's tab completion:
    eval "$(diffode-train -sc install=bash)"; eval "$(diffode-eval -sc install=bash)"
"""
from __future__ import annotations

import sys

USAGE = __doc__


def _hydra_main(module: str, argv: list[str], prog: str):
    import importlib

    sys.argv = [prog, *argv]  # Hydra parses sys.argv
    importlib.import_module(module).main()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        _hydra_main("diffode.cli.train", rest, "diffode-train")
    elif cmd == "eval":
        _hydra_main("diffode.cli.evaluate", rest, "diffode-eval")
    elif cmd == "report":
        _hydra_main("diffode.cli.report", rest, "diffode-report")
    elif cmd == "main":  # the added override goes last: Hydra's argparse takes no flag (-m) after an override
        _hydra_main("diffode.cli.evaluate", [*rest, "experiment=eval_main"], "diffode-main")
    elif cmd == "fetch-weights":
        from diffode.metrics.weights import fetch

        for name in rest or ["all"]:
            fetch(name)
    else:
        from diffode.config import group_options

        if cmd in group_options("method"):
            _hydra_main("diffode.cli.train", [*rest, f"method={cmd}"], f"diffode-{cmd}")
            return
        sys.exit(f"diffode: unknown command {cmd!r}; the commands are train, eval, main, report, fetch-weights and the "
                 f"methods {', '.join(group_options('method'))}.\n\n{USAGE}")


if __name__ == "__main__":
    main()
