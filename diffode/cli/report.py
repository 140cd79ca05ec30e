"""`diffode report [the sweep's overrides] output_dir=<run dir>`: rewrite report.md, the figures and
the contact sheet of a finished `diffode eval` run from its results.csv, sampling no cell again
(diffode.evaluation.render). It takes the overrides of the run that made the table, which say each
cell's family; a table made with other settings is refused.

    diffode report experiment=eval_main output_dir=experiments/main_job
"""
from __future__ import annotations

from omegaconf import DictConfig

from .errors import ConfigError, hydra_entry


def report(cfg: DictConfig, rendered_by: str = "") -> str:
    from diffode.evaluation.render import render

    from diffode.evaluation.runner import output_dir, settings_hash

    if not cfg.get("output_dir"):
        raise ConfigError("diffode report needs output_dir=<the run directory of a finished diffode eval>, "
                          "e.g. diffode report experiment=eval_main output_dir=experiments/main_job")
    try:
        path = render(cfg, output_dir(cfg), settings_hash(cfg), rendered_by)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    print(f"wrote {path} and its figures")
    return str(path)


@hydra_entry(config_name="eval")
def main(cfg: DictConfig) -> None:
    from diffode.evaluation.runner import task_overrides

    report(cfg, " ".join(["diffode report", *task_overrides()]))


if __name__ == "__main__":
    main()
