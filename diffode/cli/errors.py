"""Entry points report a bad config, a full disk or a stop as one short paragraph, once, without a traceback.

Every check that runs before compute raises `ConfigError` (a ValueError whose message names the fix).
`hydra_entry` wraps a Hydra task function so that such an error prints `diffode: <message>` to stderr
and exits with status 2; a full disk (OSError ENOSPC / EDQUOT) exits with 1 and `Stopped` (SIGTERM) with
its own status (143). HYDRA_FULL_ERROR=1 (or DIFFODE_TRACEBACK=1) re-raises them with their traceback.
"""
from __future__ import annotations

import functools
import os
import sys
import textwrap
import warnings

from diffode.config import CONFIG_PATH


class ConfigError(ValueError):
    """A combination of options that cannot work; the message names the fix."""


class Stopped(Exception):
    """The job was told to stop (SIGTERM) and did so cleanly; the message says how to continue."""

    def __init__(self, message: str, status: int = 143):
        super().__init__(message)
        self.status = status


def disk_full_message(e: OSError) -> str:
    where = f" writing {e.filename}" if e.filename else ""
    return (f"the disk is full ({e.strerror or e}){where}. Free space there (or point output_dir / $DIFFODE_CACHE "
            "at a disk with room) and run the same command again: what was written before is intact, and the "
            "re-run continues from it.")


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
            from diffode.cache import disk_full

            try:
                return fn(cfg)
            except ConfigError as e:
                if wants_traceback():
                    raise
                report(e)
                sys.exit(2)
            except Stopped as e:
                if wants_traceback():
                    raise
                report(e)
                sys.exit(e.status)
            except OSError as e:
                if wants_traceback() or not disk_full(e):
                    raise
                report(RuntimeError(disk_full_message(e)))
                sys.exit(1)

        # conf/hydra/launcher/submitit_*.yaml share their names with the plugin's schemas on purpose:
        # Hydra then type-checks them against hydra-submitit-launcher's fields.
        warnings.filterwarnings("ignore", message=".*validated against ConfigStore schema.*")
        return hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base="1.3")(task)

    return wrap
