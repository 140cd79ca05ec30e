"""Entry points report a bad config as one short paragraph, once, without a traceback.

Every check that runs before compute raises `ConfigError` (a ValueError whose message names the fix).
`hydra_entry` wraps a Hydra task function so that such an error prints `diffode: <message>` to stderr
and exits with status 2. HYDRA_FULL_ERROR=1 (or DIFFODE_TRACEBACK=1) re-raises it with its traceback.
"""
from __future__ import annotations

import functools
import os
import sys
import textwrap
import warnings

from diffode.config import CONFIG_PATH, ConfigError  # noqa: F401  (re-exported: the error entry points report)


def wants_traceback() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HYDRA_FULL_ERROR", "DIFFODE_TRACEBACK"))


def report(e: BaseException) -> None:
    msg = " ".join(str(e).split()) if "\n" not in str(e) else str(e)
    print("\n".join(textwrap.wrap(f"diffode: {msg}", width=110, break_long_words=False, break_on_hyphens=False))
          if "\n" not in msg else f"diffode: {msg}", file=sys.stderr)


def hydra_entry(config_name: str):
    """@hydra.main on the packaged configs (pkg://diffode.conf), with one-paragraph config errors."""
    import hydra

    def wrap(fn):
        @functools.wraps(fn)
        def task(cfg):
            try:
                return fn(cfg)
            except ConfigError as e:
                if wants_traceback():
                    raise
                report(e)
                sys.exit(2)

        # conf/hydra/launcher/submitit_*.yaml share their names with the plugin's schemas on purpose:
        # Hydra then type-checks them against hydra-submitit-launcher's fields.
        warnings.filterwarnings("ignore", message=".*validated against ConfigStore schema.*")
        hydra_main = hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base="1.3")(task)

        @functools.wraps(fn)
        def entry(*args, **kwargs):
            from diffode.extras import launcher_errors

            from .checks import slurm_errors

            missing = launcher_errors(sys.argv[1:])  # Hydra builds the launcher before `task` runs
            missing = missing or slurm_errors(sys.argv[1:])
            if missing:
                report(ConfigError(" ".join(missing)))
                sys.exit(2)
            return hydra_main(*args, **kwargs)

        return entry

    return wrap
