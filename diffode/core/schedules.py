"""Noise schedules: x_t = alpha(t) x0 + sigma(t) eps, t in [t_min, t_max].

Everything is float64. Solvers never see t: they work in VE coordinates with
sigma_ve = sigma / alpha = exp(-lambda) (docs/design.md). A schedule is alpha(t), sigma(t)
and the inverse of lambda = log(alpha / sigma); every other map (the VE sigma, t from a VE
sigma, alpha at a VE sigma) follows from those three in the base class, for every family.
A family may replace a derived map by its closed form (VP: alpha = 1 / sqrt(1 + s^2); VE:
alpha = 1), which tests/test_schedules.py checks against the derivation. Nothing branches on
the kind of schedule. docs/design.md, "Adding a schedule", says what a new one must define.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPE = torch.float64


def _t(x) -> Tensor:
    return torch.as_tensor(x, dtype=DTYPE)


class Schedule:
    """Base class. Subclasses define log_alpha, log_sigma and t_from_lambda (the inverse of lambda)."""

    name: str = "schedule"
    t_min: float
    t_max: float

    # -- the three primitives -------------------------------------------------------
    def log_alpha(self, t) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define log_alpha(t)")

    def log_sigma(self, t) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define log_sigma(t)")

    def t_from_lambda(self, lam) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define t_from_lambda(lambda)")

    # -- derived quantities ------------------------------------------------------
    def alpha(self, t) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> Tensor:
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t) -> Tensor:
        """Half log-SNR, log(alpha / sigma)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def ve_sigma(self, t) -> Tensor:
        """sigma / alpha = exp(-lambda): the sigma every solver works with."""
        return torch.exp(-self.lambda_(t))

    def t_from_ve_sigma(self, s) -> Tensor:
        return self.t_from_lambda(-torch.log(_t(s)))

    def alpha_from_ve_sigma(self, s) -> Tensor:
        """alpha at the time whose VE sigma is s (families with a closed form override this)."""
        return self.alpha(self.t_from_ve_sigma(s))

    def noise_cond(self, t) -> Tensor:
        """The time value a network trained under this schedule is conditioned on."""
        return _t(t)

    @property
    def sigma_min(self) -> float:
        return float(self.ve_sigma(self.t_min))

    @property
    def sigma_max(self) -> float:
        return float(self.ve_sigma(self.t_max))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t in [{self.t_min:g}, {self.t_max:g}], sigma_ve in [{self.sigma_min:.4g}, {self.sigma_max:.4g}])"


class VPSchedule(Schedule):
    """Variance preserving: alpha^2 + sigma^2 = 1, so sigma follows from alpha and alpha = 1 / sqrt(1 + s^2)."""

    def log_sigma(self, t) -> Tensor:
        # sigma^2 = 1 - alpha^2, written with expm1 so it stays exact as t -> 0.
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def alpha_from_ve_sigma(self, s) -> Tensor:
        return torch.rsqrt(1.0 + _t(s) ** 2)


class VESchedule(Schedule):
    """Variance exploding: alpha = 1, so the VE sigma is sigma itself."""

    def log_alpha(self, t) -> Tensor:
        return torch.zeros_like(_t(t))

    def ve_sigma(self, t) -> Tensor:
        return self.sigma(t)

    def alpha_from_ve_sigma(self, s) -> Tensor:
        return torch.ones_like(_t(s))


class VPLinear(VPSchedule):
    """Song et al. VP-SDE: beta(t) = beta_0 + t (beta_1 - beta_0)."""

    name = "vp_linear"

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        self.beta_0, self.beta_1, self.t_min, self.t_max = beta_0, beta_1, t_min, t_max

    def log_alpha(self, t) -> Tensor:
        t = _t(t)
        return -0.25 * t * t * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def t_from_lambda(self, lam) -> Tensor:
        # -2 log alpha = log(1 + e^{-2 lambda}); solve the quadratic in its rationalised
        # form, which has no cancellation at small t (DPM-Solver's inverse_lambda).
        lam = _t(lam)
        db = self.beta_1 - self.beta_0
        tmp = 2.0 * db * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        return tmp / (torch.sqrt(self.beta_0**2 + tmp) + self.beta_0) / db

    def noise_cond(self, t) -> Tensor:
        return 999.0 * _t(t)


class VPCosine(VPSchedule):
    """Nichol & Dhariwal: alpha_bar(t) = cos^2(theta) / cos^2(theta_0), theta = (t + s)/(1 + s) pi/2.

    The usual clipping: t_max = 0.9946 keeps lambda(t_max) near -5.1 (DPM-Solver's choice),
    where the discrete version clips beta at 0.999.
    """

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self.theta_0 = s / (1.0 + s) * math.pi / 2.0

    def _theta(self, t) -> Tensor:
        return (_t(t) + self.s) / (1.0 + self.s) * math.pi / 2.0

    def log_alpha(self, t) -> Tensor:
        return torch.log(torch.cos(self._theta(t))) - math.log(math.cos(self.theta_0))

    def log_sigma(self, t) -> Tensor:
        # 1 - cos^2(th)/cos^2(th0) = sin(th - th0) sin(th + th0) / cos^2(th0): no cancellation.
        th = self._theta(t)
        return 0.5 * (torch.log(torch.sin(th - self.theta_0)) + torch.log(torch.sin(th + self.theta_0))) - math.log(
            math.cos(self.theta_0)
        )

    def t_from_lambda(self, lam) -> Tensor:
        lam = _t(lam)
        alpha = torch.sqrt(torch.sigmoid(2.0 * lam))
        sigma2 = torch.sigmoid(-2.0 * lam)
        c0, s0 = math.cos(self.theta_0), math.sin(self.theta_0)
        # cos(th) = c0 alpha and sin^2(th) = s0^2 + c0^2 sigma^2; atan2 is accurate everywhere.
        th = torch.atan2(torch.sqrt(s0 * s0 + c0 * c0 * sigma2), c0 * alpha)
        return th * 2.0 / math.pi * (1.0 + self.s) - self.s

    def noise_cond(self, t) -> Tensor:
        return 999.0 * _t(t)


class VE(VESchedule):
    """NCSN / VE-SDE: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5, t_max: float = 1.0):
        self.s_min, self.s_max, self.t_min, self.t_max = sigma_min, sigma_max, t_min, t_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def log_sigma(self, t) -> Tensor:
        return math.log(self.s_min) + _t(t) * self._log_ratio

    def t_from_lambda(self, lam) -> Tensor:
        return (-_t(lam) - math.log(self.s_min)) / self._log_ratio

    def noise_cond(self, t) -> Tensor:
        return torch.log(0.5 * self.sigma(t))  # NCSN++ conditions on log(sigma / 2)


class EDM(VESchedule):
    """Karras et al.: alpha = 1, sigma(t) = t, sigma in [0.002, 80], sigma_data = 0.5."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.t_min, self.t_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def log_sigma(self, t) -> Tensor:
        return torch.log(_t(t))

    def sigma(self, t) -> Tensor:
        return _t(t).clone()

    def t_from_lambda(self, lam) -> Tensor:
        return torch.exp(-_t(lam))

    def noise_cond(self, t) -> Tensor:
        return 0.25 * torch.log(_t(t))  # EDM's c_noise


class DiscreteVP(VPSchedule):
    """A DDPM schedule given by its betas (what DDPM checkpoints use).

    As DPM-Solver does, index i in 0..N-1 sits at t_i = (i + 1) / N and log alpha is
    interpolated linearly in t between those points; the network sees the index
    1000 (t - 1/N) scaled to N. Also accepts alphas_cumprod directly.
    """

    name = "vp_discrete"

    def __init__(self, betas=None, alphas_cumprod=None, beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_train_timesteps: int = 1000, kind: str = "linear"):
        if alphas_cumprod is not None:
            log_alpha = 0.5 * torch.log(_t(alphas_cumprod))
        else:
            if betas is None:
                betas = discrete_betas(kind, num_train_timesteps, beta_start, beta_end)
            log_alpha = 0.5 * torch.cumsum(torch.log1p(-_t(betas)), 0)
        n = log_alpha.numel()
        if n < 2 or not bool((log_alpha[1:] < log_alpha[:-1]).all()):
            raise ValueError("DiscreteVP needs >= 2 strictly increasing betas > 0 (alpha_bar strictly decreasing)")
        self.N = n
        self.ts = torch.arange(1, n + 1, dtype=DTYPE) / n
        self.log_alphas = log_alpha
        self.t_min, self.t_max = 1.0 / n, 1.0

    @staticmethod
    def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
        """Piecewise-linear interpolation with linear extrapolation; xp increasing."""
        idx = torch.clamp(torch.searchsorted(xp, x.detach().contiguous()), 1, xp.numel() - 1)
        x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
        return f0 + (x - x0) * (f1 - f0) / (x1 - x0)

    def log_alpha(self, t) -> Tensor:
        t = _t(t)
        return self._interp(t.reshape(-1), self.ts, self.log_alphas).reshape(t.shape)

    def t_from_lambda(self, lam) -> Tensor:
        lam = _t(lam)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lam)
        # log alpha decreases in t: interpolate on the reversed (increasing) table.
        flat = self._interp(log_alpha.reshape(-1), self.log_alphas.flip(0), self.ts.flip(0))
        return flat.reshape(lam.shape)

    def noise_cond(self, t) -> Tensor:
        return (_t(t) - 1.0 / self.N) * self.N


def discrete_betas(kind: str, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The beta tables DDPM checkpoints ship with: 'linear' or 'cosine' (squaredcos_cap_v2)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=DTYPE)
    if kind == "cosine":
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return _t([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    raise ValueError(f"unknown discrete beta schedule {kind!r}; choose 'linear' or 'cosine'")


SCHEDULES = {cls.name: cls for cls in (VPLinear, VPCosine, VE, EDM, DiscreteVP)}


def get_schedule(name: str, **kwargs) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
