"""AMED's predictor g_phi: where inside a step the second evaluation should sit, and two small scales.

Inputs: the bottleneck feature map of the step's first network evaluation, averaged over channels and
flattened (r x r values; zeros where that evaluation was the analytic first step), and positional
embeddings of sigma_cur and sigma_next through one shared Linear + SiLU. Outputs a Stage
(diffode/core/stage.py):

    r = sigmoid(.) in (0, 1) (clamped to [1e-4, 1 - 1e-4])   s = sigma_next^r sigma_cur^(1 - r)
    c = 1 + scale_dir  (2 sigmoid(.) - 1)           in (1 - scale_dir, 1 + scale_dir)      (if scale_dir > 0)
    a = 1 + scale_time (2 sigmoid(.) - 1)           in (1 - scale_time, 1 + scale_time)    (if scale_time > 0)

With a prior (`prior={"grid": "edm", "rho": 7}` or `{"grid": "logsnr"}`) the r head predicts a correction
to r0, the fraction where the same grid family's 2N-step grid puts its point between sigma_cur and
sigma_next (the midpoint of the step in that grid's uniform variable: sigma^(1/rho) for edm, log sigma
for logsnr, i.e. r0 = 1/2): r = sigmoid(logit(r0) + .), and the three output layers start at zero, so
the untrained predictor gives s = that point and c = a = 1: an untrained plugin is its base solver on
the 2N-step grid (exactly so without AFS; tests/test_amed_method.py).

`first_at_start`: step 0's stage is sigma_cur itself (r = 0), whatever the heads say (c and a still
apply). With AFS this makes the analytic first step a step of length zero whose slope iPNDM drops
from its history (solvers/ipndm.py): AMED's `afs_grid: base` (methods/amed/__init__.py).

One network for all steps (conditioned on the two times). Models without a bottleneck (the exact
GMM denoiser, the MLP) get the times-only predictor (feature_shape None): one stage per step for the
whole batch, a learned time-step refinement rather than a per-sample one; results name it
`<student>/amed_times`. Runs in float64 (it is tiny), so its gradients can be checked by finite
differences against the solver's float64 state.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from diffode.core.stage import Stage
from diffode.nets.embedding import PositionalEmbedding

R_MIN = 1e-4
PRIOR_GRIDS = ("edm", "logsnr")


def prior_ratio(prior: dict, sigma_cur: Tensor, sigma_next: Tensor) -> Tensor:
    """r0: the 2N-step grid's point between sigma_cur and sigma_next, as a fraction of the step in log sigma."""
    if prior["grid"] == "logsnr":
        return torch.full_like(torch.as_tensor(sigma_cur, dtype=torch.float64), 0.5)
    if prior["grid"] != "edm":
        raise ValueError(f"AMED r prior for grid {prior['grid']!r}: only {', '.join(PRIOR_GRIDS)}")
    a, b = (torch.as_tensor(v, dtype=torch.float64) for v in (sigma_cur, sigma_next))
    k = 1.0 / float(prior["rho"])
    s = ((a ** k + b ** k) / 2) ** (1 / k)
    return torch.log(s / a) / torch.log(b / a)


class AMEDPredictor(nn.Module):
    def __init__(self, feature_shape=None, scale_dir: float = 0.0, scale_time: float = 0.0, hidden: int = 128,
                 time_channels: int = 8, feature_channels: int = 4, prior: dict | None = None,
                 first_at_start: bool = False):
        super().__init__()
        self.prior = None if prior is None else dict(prior)
        self.first_at_start = bool(first_at_start)
        self.feature_shape = None if feature_shape is None else tuple(int(v) for v in feature_shape)
        self.scale_dir, self.scale_time = float(scale_dir), float(scale_time)
        self.emb = PositionalEmbedding(time_channels)
        self.time = nn.Linear(time_channels, time_channels)
        width = 2 * time_channels
        if self.feature_shape is not None:
            n = self.feature_shape[0] * self.feature_shape[1]
            self.features = nn.Sequential(nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, feature_channels))
            width += feature_channels
        self.fc_r = nn.Linear(width, 1)
        self.fc_dir = nn.Linear(width, 1) if self.scale_dir > 0 else None
        self.fc_time = nn.Linear(width, 1) if self.scale_time > 0 else None
        nn.init.xavier_uniform_(self.time.weight)
        nn.init.zeros_(self.time.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.time:
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        if self.prior is not None:  # start exactly at the prior: r = r0, c = a = 1
            for head in (self.fc_r, self.fc_dir, self.fc_time):
                if head is not None:
                    nn.init.zeros_(head.weight)
        self.double()

    @property
    def needs_features(self) -> bool:
        return self.feature_shape is not None

    @property
    def kind(self) -> str:
        return "bottleneck" if self.needs_features else "times_only"

    def _time(self, sigma: Tensor) -> Tensor:
        dt = self.fc_r.weight.dtype
        return torch.nn.functional.silu(self.time(self.emb(sigma.detach().reshape(1)).to(dt)))

    def forward(self, i, sigma_cur: Tensor, sigma_next: Tensor, x: Tensor, features: Tensor | None = None) -> Stage:
        dt = self.fc_r.weight.dtype
        z = torch.cat([self._time(sigma_cur), self._time(sigma_next)], 1)  # [1, 2 time_channels]
        if self.feature_shape is not None:
            B = x.shape[0]
            if features is None:  # AFS step: no network evaluation, no features (as the paper)
                h = torch.zeros(B, self.feature_shape[0] * self.feature_shape[1], dtype=dt, device=x.device)
            else:
                h = features.mean(1).flatten(1).to(dt)
            z = torch.cat([self.features(h), z.expand(B, -1)], 1)
        # [B] with features (one stage per sample), 0-d for the times-only predictor
        squeeze = (lambda t: t.reshape(-1)) if self.feature_shape is not None else (lambda t: t.reshape(()))
        # r kept inside (0, 1) also where the sigmoid saturates in float64: s = sigma_cur would divide by
        # zero in DPM-Solver-2's 1/(2 r) and in Heun's weight
        logit = self.fc_r(z)
        if self.prior is not None:
            r0 = prior_ratio(self.prior, sigma_cur, sigma_next).to(dt).clamp(R_MIN, 1 - R_MIN)
            logit = logit + torch.log(r0 / (1 - r0))
        r = squeeze(torch.sigmoid(logit)).to(sigma_cur.dtype).clamp(R_MIN, 1 - R_MIN)
        s = sigma_next ** r * sigma_cur ** (1 - r)
        if self.first_at_start and i == 0:  # afs_grid: base (methods/amed): step 0's stage is its start, r = 0
            s = sigma_cur
        c = None if self.fc_dir is None else squeeze(1 + self.scale_dir * (2 * torch.sigmoid(self.fc_dir(z)) - 1))
        a = None if self.fc_time is None else squeeze(1 + self.scale_time * (2 * torch.sigmoid(self.fc_time(z)) - 1))
        return Stage(s, None if c is None else c.to(sigma_cur.dtype), None if a is None else a.to(sigma_cur.dtype))

    def ratio(self, stage: Stage, sigma_cur: Tensor, sigma_next: Tensor) -> Tensor:
        """r back from a stage (for logs): log(s / sigma_cur) / log(sigma_next / sigma_cur)."""
        return torch.log(stage.sigma / sigma_cur) / torch.log(sigma_next / sigma_cur)


def predictor_spec(feature_shape, scale_dir: float, scale_time: float, hidden: int, time_channels: int,
                   feature_channels: int, prior: dict | None = None, first_at_start: bool = False) -> dict:
    """The build spec (diffode.spec.build) an artifact stores to rebuild the predictor."""
    return {"_target_": f"{AMEDPredictor.__module__}.AMEDPredictor",
            "feature_shape": None if feature_shape is None else list(feature_shape), "scale_dir": float(scale_dir),
            "scale_time": float(scale_time), "hidden": int(hidden), "time_channels": int(time_channels),
            "feature_channels": int(feature_channels), "prior": None if prior is None else dict(prior),
            "first_at_start": bool(first_at_start)}
