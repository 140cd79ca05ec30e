# The Hydra configs, installed as the package diffode.conf (setup.py maps it to this directory).
