"""AMED's predictor g_phi: where inside a step the second evaluation should sit, and two small scales.

Inputs: the bottleneck feature map of the step's first network evaluation, averaged over channels and
flattened (r x r values; zeros where that evaluation was the analytic first step), and positional
embeddings of sigma_cur and sigma_next through one shared Linear + SiLU. Outputs a Stage
(diffode/core/stage.py):

    r = sigmoid(.) in (0, 1) (clamped to [1e-4, 1 - 1e-4])   s = sigma_next^r sigma_cur^(1 - r)
    c = 1 + scale_dir  (2 sigmoid(.) - 1)           in (1 - scale_dir, 1 + scale_dir)      (if scale_dir > 0)
    a = 1 + scale_time (2 sigmoid(.) - 1)           in (1 - scale_time, 1 + scale_time)    (if scale_time > 0)

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


class AMEDPredictor(nn.Module):
    def __init__(self, feature_shape=None, scale_dir: float = 0.0, scale_time: float = 0.0, hidden: int = 128,
                 time_channels: int = 8, feature_channels: int = 4):
        super().__init__()
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
        r = squeeze(torch.sigmoid(self.fc_r(z))).to(sigma_cur.dtype).clamp(R_MIN, 1 - R_MIN)
        s = sigma_next ** r * sigma_cur ** (1 - r)
        c = None if self.fc_dir is None else squeeze(1 + self.scale_dir * (2 * torch.sigmoid(self.fc_dir(z)) - 1))
        a = None if self.fc_time is None else squeeze(1 + self.scale_time * (2 * torch.sigmoid(self.fc_time(z)) - 1))
        return Stage(s, None if c is None else c.to(sigma_cur.dtype), None if a is None else a.to(sigma_cur.dtype))

    def ratio(self, stage: Stage, sigma_cur: Tensor, sigma_next: Tensor) -> Tensor:
        """r back from a stage (for logs): log(s / sigma_cur) / log(sigma_next / sigma_cur)."""
        return torch.log(stage.sigma / sigma_cur) / torch.log(sigma_next / sigma_cur)


def predictor_spec(feature_shape, scale_dir: float, scale_time: float, hidden: int, time_channels: int,
                   feature_channels: int) -> dict:
    """The build spec (diffode.spec.build) an artifact stores to rebuild the predictor."""
    return {"_target_": f"{AMEDPredictor.__module__}.AMEDPredictor",
            "feature_shape": None if feature_shape is None else list(feature_shape), "scale_dir": float(scale_dir),
            "scale_time": float(scale_time), "hidden": int(hidden), "time_channels": int(time_channels),
            "feature_channels": int(feature_channels)}
