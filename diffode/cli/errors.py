"""Entry points report a bad config as one short paragraph, once, without a traceback.

Every check that runs before compute raises `ConfigError` (a ValueError whose message names the fix).
`hydra_entry` wraps a Hydra task function so that such an error prints `diffode: <message>` to stderr
and exits with status 2. HYDRA_FULL_ERROR=1 (or DIFFODE_TRACEBACK=1) re-raises it with its traceback.
An override Hydra refuses while composing (a key the config or a method's options schema does not have, a
value of the wrong type or outside its choices) is said the same way: a single run composes once first
(`compose_error`), since Hydra's own report of it suggests appending the key with `+`.
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


def compose_error(config_name: str, argv: list[str]) -> str | None:
    """The one-paragraph refusal of an override Hydra cannot compose into `config_name` (key, value, what is wrong and
    the fix), or None when it composes or the command line is not a single run of overrides (flags: -m, --cfg,
    --help, ... are Hydra's own business, and so are its other errors, e.g. an unknown config group option)."""
    if any(a.startswith("-") or "=" not in a for a in argv):
        return None
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    try:
        with initialize_config_module("diffode.conf", version_base="1.3"):
            compose(config_name, overrides=argv)
        return None
    except ConfigCompositionException as e:
        cause = e.__cause__
    key = getattr(cause, "full_key", None)
    unknown = isinstance(cause, (ConfigKeyError, ConfigAttributeError))
    if not key or not (unknown or isinstance(cause, ValidationError)):
        return None
    given = next((a for a in argv if a.split("=", 1)[0].lstrip("+~") == key), key)
    what = str(getattr(cause, "msg", cause)).splitlines()[0]
    where = "`--cfg job` prints the composed config"
    if key.startswith("method."):
        from diffode.methods.registry import schema_method

        name = schema_method(getattr(cause, "object_type", None))
        where = f"the options of method={name} are the keys of conf/method/{name}.yaml" if name else where
    if unknown:
        return f"{given}: {key} is not a key of the config ({what}); remove it or correct its name ({where})."
    return f"{given}: {what}; give {key} a value of its type ({where})."


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

            from .launch import slurm_errors

            missing = launcher_errors(sys.argv[1:])  # Hydra builds the launcher before `task` runs
            missing = missing or slurm_errors(sys.argv[1:])
            if not missing and not wants_traceback():
                missing = [m for m in [compose_error(config_name, sys.argv[1:])] if m]
            if missing:
                report(ConfigError(" ".join(missing)))
                sys.exit(2)
            return hydra_main(*args, **kwargs)

        return entry

    return wrap
