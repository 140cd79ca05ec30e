"""Solver inputs that come from the model: the general hook behind registry.SolverSpec.model_inputs.

A solver that needs something only the model can give (Analytic-DPM's moments E||eps_hat||^2/d at each grid
sigma, estimated over the model's training data) declares the option's name in `model_inputs` and stays a
plain function taking it as an option. `Model.sample` calls `with_model_inputs` on its plan before sampling:
every declared input the caller left out (None) is computed by its provider here, for the plan's grid.
So the sweep, the reference solves and any caller of Model.sample get it without knowing the solver.

The moments are cached on disk by `cached_tensor` (diffode.cache: versioned, self-healing, locked), keyed on the
model's identity, the grid's sigmas, the number of Monte Carlo points and the seed.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from .cache import cached

log = logging.getLogger(__name__)
INPUTS_VERSION = 1  # bump when the same key would give other values


def with_model_inputs(model, plan):
    """The plan with every model input its solver declares and the plan's options lack computed for `model`
    on the plan's grid (the plan itself when nothing is missing)."""
    from dataclasses import replace

    missing = [k for k in plan.spec.model_inputs if plan.options.get(k) is None]
    if not missing:
        return plan
    options = dict(plan.options)
    for name in missing:
        if name not in PROVIDERS:
            raise ValueError(f"solver {plan.spec.name!r} declares the model input {name!r}, which no provider in "
                             f"diffode/solver_inputs.py computes; pass {name}=... yourself.")
        options[name] = PROVIDERS[name](model, plan.sigmas, options)
    return replace(plan, options=options)


def cached_tensor(kind: str, key_spec: dict, compute) -> Tensor:
    """compute() once per key (model identity + grid + settings), kept under $DIFFODE_CACHE/<kind>/; a damaged or
    foreign entry is set aside and recomputed (diffode.cache)."""
    data, _, _ = cached(kind, key_spec, lambda: {"value": compute()}, version=INPUTS_VERSION, fields=("value",))
    return data["value"]


def training_points(model, n: int, seed: int) -> Tensor:
    """n points of the model's training data in its data space: exact samples of a mixture, or a random subset
    (with repeats when n exceeds it) of the digits / torchvision training split."""
    g = torch.Generator().manual_seed(int(seed))
    if model.gmm is not None:
        return model.gmm.sample(n, g)
    if model.dataset == "digits":
        from .data.digits import load_digits_tensors

        data = load_digits_tensors("train")[0]
    elif model.dataset in ("cifar10", "mnist"):
        from .data.torchvision_data import CIFAR10DataModule, MNISTDataModule

        dm = (CIFAR10DataModule if model.dataset == "cifar10" else MNISTDataModule)(download=False)
        dm.setup()
        idx = torch.randperm(len(dm.train_set), generator=g)[:n]
        return torch.stack([dm.train_set[int(i)][0] for i in idx])
    else:
        raise ValueError(f"no training data known for dataset {model.dataset!r} (digits, cifar10, mnist or a "
                         "mixture); pass eps_moments=... (estimate_eps_moments over your data) to the solver.")
    reps = math.ceil(n / data.shape[0])
    idx = torch.cat([torch.randperm(data.shape[0], generator=g) for _ in range(reps)])[:n]
    return data[idx]


def eps_moments(model, sigmas: Tensor, options: dict) -> Tensor:
    """Analytic-DPM's E||eps_hat||^2/d at sigmas[:-1] (the paper's beta-bar Gamma), cached per model and grid."""
    from .core.solvers.analytic_dpm import estimate_eps_moments

    n, seed = int(options.get("mc_samples", 1000)), int(options.get("mc_seed", 0))
    grid = sigmas[:-1].detach().cpu().to(torch.float64)
    key = {"model": model.identity, "sigmas": [float.hex(float(s)) for s in grid], "n": n, "seed": seed}

    def compute():
        log.info("Analytic-DPM moments: %d training points at %d sigmas", n, grid.numel())
        device = next(iter(model.denoiser.parameters()), torch.empty(0)).device
        x0 = training_points(model, n, seed).to(device)
        return estimate_eps_moments(model.denoiser, x0, grid.to(device), torch.Generator().manual_seed(seed + 1))

    return cached_tensor("analytic_moments", key, compute)


PROVIDERS = {"eps_moments": eps_moments}
