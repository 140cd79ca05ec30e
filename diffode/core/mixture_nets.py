"""Exact networks of a Gaussian mixture: what a perfectly trained net of any parameterization outputs.

`MixtureNet(gmm, schedule, prediction)` is net(x_t, c_noise) -> eps, x0, v or velocity of the mixture at
t = schedule.t_from_noise_cond(c_noise), i.e. the network a training run under that schedule and
parameterization converges to. Wrapped in ModelDenoiser it goes through exactly the code path of a trained
model (noise conditioning, x_t = alpha x, the parameterization's conversion back to D), so solvers,
grids and learned methods get closed-form answers on flow models too: `MixtureNet(gmm, Flow(), "velocity")`
is the exact flow-matching model of the mixture. The mixture is evaluated in (alpha, sigma) form
(GaussianMixture.denoise has no 1/alpha), so it stays finite as alpha -> 0, a flow's t -> 1.

In VE coordinates the exact D(x, sigma_ve) of a mixture does not depend on the schedule: the wrapped net
gives gmm(x, sigma_ve) back to round-off (tests/test_flow.py), whatever the schedule and parameterization.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .denoisers import GaussianMixture, v_from_x0_eps, velocity_from_x0
from .schedules import DTYPE, Schedule

OUTPUTS = ("eps", "x0", "v", "velocity")


class MixtureNet(nn.Module):
    """net(x_t, c_noise) of a GaussianMixture under `schedule`, predicting `prediction` (float64)."""

    def __init__(self, gmm: GaussianMixture, schedule: Schedule, prediction: str):
        super().__init__()
        if prediction not in OUTPUTS:
            raise ValueError(f"an exact mixture network predicts one of {', '.join(OUTPUTS)}, not {prediction!r} "
                             "(EDM preconditioning is the mixture's own denoiser: use the gmm source without a schedule).")
        self.gmm, self.schedule, self.prediction = gmm, schedule, prediction

    def forward(self, x_t: Tensor, c_noise: Tensor) -> Tensor:
        t = self.schedule.t_from_noise_cond(torch.as_tensor(c_noise, dtype=DTYPE)).reshape(-1)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        x = x_t.to(DTYPE)
        x0 = self.gmm.denoise(x, alpha, sigma)
        a = alpha.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        s = sigma.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction == "x0":
            return x0
        if self.prediction == "velocity":
            return velocity_from_x0(x, x0, a, s)
        eps = (x - a * x0) / s
        return eps if self.prediction == "eps" else v_from_x0_eps(x0, eps, a, s)
