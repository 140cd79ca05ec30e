"""Denoisers D(x, sigma) ~ E[x0 | x] in VE coordinates (x = x_t / alpha, sigma = sigma_t / alpha).

Two kinds live here: adapters that turn a trained network (eps, x0, v, flow-matching velocity or
EDM-preconditioned output, under any schedule) into that one interface, and exact analytic denoisers
(Gaussian mixtures, a finite set of points) that make exact answers available to tests.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .schedules import DTYPE, Schedule

PREDICTIONS = ("eps", "x0", "v", "velocity", "edm")


# -- parameterization conversions in the schedule's own coordinates ----------------------
# x_t = alpha x0 + sigma eps;  v = alpha eps - sigma x0  (Salimans & Ho).

def x0_from_eps(x_t, eps, alpha, sigma):
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t, x0, alpha, sigma):
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0, eps, alpha, sigma):
    return alpha * eps - sigma * x0


def x0_from_v(x_t, v, alpha, sigma):
    # alpha x_t - sigma v = (alpha^2 + sigma^2) x0, true for VP (=1) and VE alike.
    return (alpha * x_t - sigma * v) / (alpha * alpha + sigma * sigma)


def eps_from_v(x_t, v, alpha, sigma):
    return (sigma * x_t + alpha * v) / (alpha * alpha + sigma * sigma)


# Flow matching's velocity u = eps - x0 (Lipman et al., Liu et al.; diffusers' "flow_prediction"): on the
# straight path alpha + sigma = 1 it is dx_t/dt, and x0 = x_t - t u. Written for any (alpha, sigma), so the
# round trip is exact algebra; ModelDenoiser accepts it only on a straight path (straight_path).

def x0_from_velocity(x_t, u, alpha, sigma):
    return (x_t - sigma * u) / (alpha + sigma)


def eps_from_velocity(x_t, u, alpha, sigma):
    return (x_t + alpha * u) / (alpha + sigma)


def velocity_from_x0(x_t, x0, alpha, sigma):
    # u = eps - x0 with eps = (x_t - alpha x0) / sigma
    return (x_t - (alpha + sigma) * x0) / sigma


def straight_path(schedule: Schedule, n: int = 17) -> bool:
    """alpha + sigma = 1 on [t_min, t_max]: x_t runs on the straight line from x0 to eps, so eps - x0 is its
    velocity (a VP path curves: there eps - x0 is no velocity of anything)."""
    t = torch.linspace(schedule.t_min, schedule.t_max, n, dtype=DTYPE)
    return bool(((schedule.alpha(t) + schedule.sigma(t) - 1.0).abs() < 1e-12).all())


def edm_scalings(sigma, sigma_data: float = 0.5):
    """EDM preconditioning (Karras et al. 2022, Table 1): c_skip, c_out, c_in, c_noise."""
    s2, sd2 = sigma * sigma, sigma_data * sigma_data
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + sd2)
    c_in = 1.0 / torch.sqrt(s2 + sd2)
    c_noise = 0.25 * torch.log(sigma)
    return c_skip, c_out, c_in, c_noise


def _per_sample(sigma, x: Tensor) -> Tensor:
    """sigma as a float64 tensor of shape [B] for a batch x of shape [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=DTYPE, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class ModelDenoiser(nn.Module):
    """Wrap net(x_in, c_noise) trained under `schedule` into D(x, sigma) in VE coordinates.

    prediction: 'eps', 'x0', 'v' (net input x_t = alpha x, conditioned on schedule.noise_cond(t)),
    'velocity' (flow matching's eps - x0, the same input; only under a straight path, the flow
    schedule), or 'edm' (EDM preconditioning around the raw net, conditioned on c_noise = log(sigma)/4).
    The coefficients are float64; the net runs in its own dtype; the output takes x's dtype.
    `forward_with_features` also returns the bottleneck feature map of the same call (nets with a
    spatial bottleneck, i.e. the UNet's `bottleneck_resolution`; None for others, e.g. the MLP): AMED's
    predictor reads it, and it costs no extra evaluation.
    `cond` (class labels [B], or whatever the net takes as its condition) is handed to the net unchanged;
    None calls the net without one, as for an unconditional net. Solvers never pass it: they take the
    plain D(x, sigma) that core/conditioning.py binds to a condition.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps", sigma_data: float = 0.5):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if prediction == "velocity" and not straight_path(schedule):
            raise ValueError(f"prediction 'velocity' (flow matching's eps - x0) needs a straight path, alpha + sigma = 1, "
                             f"but the schedule is {schedule!r}; use schedule=flow, or prediction v for "
                             "Salimans & Ho's VP velocity.")
        self.net, self.schedule, self.prediction, self.sigma_data = net, schedule, prediction, sigma_data

    @property
    def net_dtype(self):
        # an exact network (core/mixture_nets.py) has float64 buffers and no parameters
        p = next(self.net.parameters(), None)
        if p is None:
            p = next((b for b in self.net.buffers() if b.is_floating_point()), None)
        return p.dtype if p is not None else torch.float32

    @property
    def num_classes(self) -> int | None:
        """The number of class labels of a class-conditional net (None: unconditional)."""
        return getattr(self.net, "num_classes", None)

    @property
    def feature_shape(self) -> tuple[int, int] | None:
        """(r, r) of the net's bottleneck feature map (channels averaged away), or None without one."""
        r = getattr(self.net, "bottleneck_resolution", None)
        return None if r is None else (int(r), int(r))

    def forward(self, x: Tensor, sigma, cond=None) -> Tensor:
        return self._denoise(x, sigma, False, cond)[0]

    def forward_with_features(self, x: Tensor, sigma, cond=None) -> tuple[Tensor, Tensor | None]:
        """(D(x, sigma), the net's bottleneck features [B, C, r, r] of this call, or None)."""
        return self._denoise(x, sigma, self.feature_shape is not None, cond)

    def _net(self, x_in, c_noise, features: bool, cond):
        kw = {} if cond is None else {"cond": cond}
        if features:
            return self.net(x_in, c_noise, return_bottleneck=True, **kw)
        return self.net(x_in, c_noise, **kw), None

    def _denoise(self, x: Tensor, sigma, features: bool, cond=None):
        s = _per_sample(sigma, x)
        dt = self.net_dtype
        if self.prediction == "edm":
            c_skip, c_out, c_in, c_noise = edm_scalings(s, self.sigma_data)
            F, h = self._net((_bcast(c_in, x) * x).to(dt), c_noise.to(dt), features, cond)
            D = _bcast(c_skip, x) * x + _bcast(c_out, x) * F.to(DTYPE)
            return D.to(x.dtype), h
        t = self.schedule.t_from_ve_sigma(s)
        alpha = self.schedule.alpha_from_ve_sigma(s)
        a, sg = _bcast(alpha, x), _bcast(alpha * s, x)
        x_t = a * x
        out, h = self._net(x_t.to(dt), self.schedule.noise_cond(t).to(device=x.device, dtype=dt), features, cond)
        out = out.to(DTYPE)
        if self.prediction == "eps":
            D = x0_from_eps(x_t, out, a, sg)
        elif self.prediction == "x0":
            D = out
        elif self.prediction == "velocity":
            D = x0_from_velocity(x_t, out, a, sg)
        else:
            D = x0_from_v(x_t, out, a, sg)
        return D.to(x.dtype), h


# -- exact denoisers ----------------------------------------------------------------------

class GaussianMixture(nn.Module):
    """p0 = sum_k pi_k N(mu_k, Sigma_k) with its exact denoiser, score and samples (float64).

    Covariances: `covs` [K, d, d] (full), or `stds` (scalar, [K] isotropic, or [K, d] diagonal).
    std 0 gives Dirac components. Works at any (alpha, sigma): the VE call is alpha = 1.
    """

    def __init__(self, weights, means, covs=None, stds=None):
        super().__init__()
        means = torch.as_tensor(means, dtype=DTYPE)
        K, d = means.shape
        weights = torch.as_tensor(weights, dtype=DTYPE).reshape(K)
        if covs is not None:
            covs = torch.as_tensor(covs, dtype=DTYPE).reshape(K, d, d)
            evals, evecs = torch.linalg.eigh(covs)
            evals = evals.clamp_min(0.0)
        else:
            stds = torch.as_tensor(0.0 if stds is None else stds, dtype=DTYPE)
            evals = (stds.reshape(-1, 1) if stds.ndim == 1 else stds).expand(K, d) ** 2 if stds.ndim < 2 else stds**2
            evals = evals.expand(K, d).clone()
            evecs = torch.eye(d, dtype=DTYPE).expand(K, d, d).clone()
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        self.register_buffer("log_pi", torch.log(weights / weights.sum()))
        self.register_buffer("mu", means)
        self.register_buffer("lam", evals)  # eigenvalues of Sigma_k  [K, d]
        self.register_buffer("U", evecs)  # eigenvectors             [K, d, d]
        self.dim = d

    @property
    def covariances(self) -> Tensor:
        return self.U @ torch.diag_embed(self.lam) @ self.U.transpose(-1, -2)

    def _terms(self, x: Tensor, alpha, sigma):
        """Per-component quantities at x_t = x under (alpha, sigma), all [B, K, ...]."""
        x = x.to(DTYPE).reshape(x.shape[0], -1)
        B = x.shape[0]
        a = torch.as_tensor(alpha, dtype=DTYPE, device=x.device).expand(B).reshape(B, 1, 1)
        s = torch.as_tensor(sigma, dtype=DTYPE, device=x.device).expand(B).reshape(B, 1, 1)
        r = x[:, None, :] - a * self.mu[None]  # [B, K, d]
        z = torch.einsum("kde,bkd->bke", self.U, r)  # r in each component's eigenbasis
        c = a * a * self.lam[None] + s * s  # eigenvalues of C_k = a^2 Sigma_k + s^2 I
        log_w = self.log_pi[None] - 0.5 * torch.log(c).sum(-1) - 0.5 * (z * z / c).sum(-1)
        return a, z, c, log_w

    def denoise(self, x: Tensor, alpha, sigma) -> Tensor:
        """E[x0 | x_t = x] = sum_k w_k (mu_k + alpha Sigma_k C_k^-1 r_k): no 1/alpha, stable as alpha -> 0."""
        a, z, c, log_w = self._terms(x, alpha, sigma)
        w = torch.softmax(log_w, dim=-1)
        D_k = self.mu[None] + a * torch.einsum("kde,bke->bkd", self.U, self.lam[None] * z / c)
        return (w[..., None] * D_k).sum(1).reshape(x.shape).to(x.dtype)

    def forward(self, x: Tensor, sigma) -> Tensor:
        return self.denoise(x, 1.0, sigma)

    def log_prob(self, x: Tensor, alpha=1.0, sigma=0.0) -> Tensor:
        """log p_t(x) of the marginal at (alpha, sigma); sigma 0 is the data density."""
        a, z, c, log_w = self._terms(x, alpha, sigma)
        return torch.logsumexp(log_w, -1) - 0.5 * self.dim * math.log(2 * math.pi)

    def score(self, x: Tensor, alpha, sigma) -> Tensor:
        """grad log p_t(x) = -sum_k w_k C_k^-1 r_k."""
        a, z, c, log_w = self._terms(x, alpha, sigma)
        w = torch.softmax(log_w, dim=-1)
        g = -torch.einsum("kde,bke->bkd", self.U, z / c)
        return (w[..., None] * g).sum(1).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.log_pi.exp(), n, replacement=True, generator=generator)
        e = torch.randn(n, self.dim, dtype=DTYPE, generator=generator)
        return self.mu[k] + torch.einsum("nde,ne->nd", self.U[k], self.lam[k].sqrt() * e)

    @property
    def std(self) -> float:
        """Overall standard deviation of the data (root mean per-coordinate variance)."""
        pi = self.log_pi.exp()
        mean = (pi[:, None] * self.mu).sum(0)
        var = (pi * (self.lam.mean(-1) + ((self.mu - mean) ** 2).mean(-1))).sum()
        return float(torch.sqrt(var))


class FiniteSetDenoiser(nn.Module):
    """The ideal denoiser of a finite training set (a Dirac mixture): D = sum softmax(-|x - y_k|^2 / 2 sigma^2) y_k."""

    def __init__(self, points: Tensor, weights=None):
        super().__init__()
        points = torch.as_tensor(points, dtype=DTYPE)
        self.register_buffer("Y", points.reshape(points.shape[0], -1))
        w = torch.ones(points.shape[0], dtype=DTYPE) if weights is None else torch.as_tensor(weights, dtype=DTYPE)
        self.register_buffer("log_pi", torch.log(w / w.sum()))

    def forward(self, x: Tensor, sigma) -> Tensor:
        xf = x.to(DTYPE).reshape(x.shape[0], -1)
        s = _per_sample(sigma, x).reshape(-1, 1)
        d2 = torch.cdist(xf, self.Y).pow(2)
        w = torch.softmax(self.log_pi[None] - d2 / (2 * s * s), dim=-1)
        return (w @ self.Y).reshape(x.shape).to(x.dtype)


def make_gmm(dim: int = 2, components: int = 8, seed: int = 0, spread: float = 1.0, std: float = 0.1,
             layout: str = "random") -> GaussianMixture:
    """Preset mixtures: 'ring' (2-D, components on a circle of radius `spread`), 'random'
    (means ~ N(0, spread^2 / dim I), random weights, anisotropic diagonal covariances around `std`) or
    'lu1d' (Lu et al. 2022's 1-D toy: means (-2, -6, 4)/7, variances (0.1, 0.1, 1)/49, weights 0.3, 0.3, 0.4)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "ring":
        if dim != 2:
            raise ValueError("layout='ring' is 2-D; use layout='random' for other dims")
        ang = torch.arange(components, dtype=DTYPE) * 2 * math.pi / components
        means = spread * torch.stack([ang.cos(), ang.sin()], -1)
        return GaussianMixture(torch.ones(components), means, stds=std)
    if layout == "lu1d":  # Lu et al. 2022's 1-D toy mixture (mle_score_ode toy.py)
        if dim != 1 or components != 3:
            raise ValueError("layout='lu1d' is Lu et al.'s 1-D mixture of 3 components; use dim=1, components=3")
        return GaussianMixture([0.3, 0.3, 0.4], [[-2 / 7], [-6 / 7], [4 / 7]],
                               stds=[math.sqrt(0.1) / 7, math.sqrt(0.1) / 7, 1 / 7])
    if layout != "random":
        raise ValueError(f"unknown gmm layout {layout!r}; choose 'ring', 'random' or 'lu1d'")
    means = torch.randn(components, dim, dtype=DTYPE, generator=g) * spread / math.sqrt(dim) * 1.5
    weights = 0.5 + torch.rand(components, dtype=DTYPE, generator=g)
    stds = std * (0.5 + torch.rand(components, dim, dtype=DTYPE, generator=g))
    return GaussianMixture(weights, means, stds=stds)


# The mixtures the project names (conf/source/gmm*.yaml, conf/dataset/gmm*.yaml): defined here only.
GMM_PRESETS = {
    "gmm1d": dict(dim=1, components=3, layout="lu1d", spread=1.0, std=0.1, seed=0),  # Lu et al. 2022's 1-D toy
    "gmm2d": dict(dim=2, components=8, layout="ring", spread=1.0, std=0.1, seed=0),
    "gmm16d": dict(dim=16, components=8, layout="random", spread=1.0, std=0.1, seed=0),
}
