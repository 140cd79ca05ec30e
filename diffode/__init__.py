"""diffode: fast sampling of diffusion models through their probability-flow ODE."""
__version__ = "0.1.0"


def __getattr__(name):
    # `diffode.sample` / `diffode.load_sampler` without importing the solver zoo at package import time.
    if name == "sample":
        from .core.sample import sample
        return sample
    if name == "encode":
        from .core.sample import encode
        return encode
    if name == "likelihood":
        from .density import likelihood
        return likelihood
    if name == "load_sampler":
        from .artifacts import load_sampler
        return load_sampler
    if name == "load_model":
        from .models import load_model
        return load_model
    raise AttributeError(name)
