"""`diffode <command> [hydra overrides...]`: one console entry for every job.

    diffode train  experiment=digits            train a denoiser (or method=ld3: learn a grid)
    diffode eval   experiment=eval_main         FID / RMSE vs NFE sweep of solvers x grids
    diffode main                                the built-in study (README's first command)
    diffode fetch-weights inception|lpips-vgg|lpips-alex|all
                                                download pretrained weights into the torch cache
                                                (on a machine with internet)
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
        _hydra_main("diffode.train", rest, "diffode-train")
    elif cmd == "eval":
        _hydra_main("diffode.evaluate", rest, "diffode-eval")
    elif cmd == "main":
        _hydra_main("diffode.evaluate", ["experiment=eval_main", *rest], "diffode-main")
    elif cmd == "fetch-weights":
        from diffode.metrics.weights import fetch

        for name in rest or ["all"]:
            fetch(name)
    else:
        sys.exit(f"diffode: unknown command {cmd!r}\n{USAGE}")


if __name__ == "__main__":
    main()
