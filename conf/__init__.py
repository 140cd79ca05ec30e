# The Hydra configs, installed as the package diffode.conf (pyproject.toml maps it to this directory).
