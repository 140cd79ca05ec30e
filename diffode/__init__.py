"""diffode: fast sampling of diffusion models through their probability-flow ODE."""
__version__ = "0.1.0"


def __getattr__(name):
    # `diffode.sample` without importing the solver zoo at package import time.
    if name == "sample":
        from .core.sample import sample
        return sample
    raise AttributeError(name)
