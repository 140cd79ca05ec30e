# The Hydra configs, installed as the package diffode.conf (pyproject.toml maps it to this directory).
# Importing it (Hydra does, for pkg://diffode.conf) registers every method's options schema in Hydra's ConfigStore
# (diffode/methods/registry.py), which conf/method/<name>.yaml names in its defaults list: so every compose of
# conf/train.yaml, through an entry point or hydra.initialize_config_module("diffode.conf"), validates method.*.
from diffode.methods.registry import load_all as _register_methods

try:
    _register_methods()
except Exception:  # a broken method package: Hydra would only say "Primary config module 'diffode.conf' not found"
    import traceback

    traceback.print_exc()
    raise
