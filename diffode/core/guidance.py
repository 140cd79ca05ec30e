"""Classifier-free guidance: a denoiser around a conditional denoiser, so every solver samples it unchanged.

Convention (the one of diffusers, DPM-Solver, EDM2 and the guidance-interval paper):

    D_w(x, sigma | c) = D_u + w (D_c - D_u),   D_c = D(x, sigma, cond=c),  D_u = D(x, sigma, cond=null)

w = 1 is the conditional model, w = 0 the unconditional one, w > 1 guides. Ho & Salimans write
eps~ = (1 + w_HS) eps_c - w_HS eps_u, so w = 1 + w_HS (their best-FID w_HS = 0.1-0.3 is w = 1.1-1.3).
The weights (1 - w, w) sum to one, so the same combination of D, eps, v or the drift (x - D) / sigma is
the same guided ODE: guiding D is guiding the solver's field.

One guided call evaluates the conditional and the unconditional halves in ONE forward of the stacked batch
[x; x] under [c; null] (2B), and says so through `forwards(sigma) = 2` (core/conditioning.py). A call that
needs one half only costs one forward: w = 1 (the conditional half), w = 0 (the unconditional half), and
outside the guidance interval (Kynkaanniemi et al. 2024: guide only for sigma in (lo, hi], w = 1
elsewhere). Those calls return the one half exactly, so w = 0 and w = 1 reproduce the unguided samples bit
for bit.

Dynamic thresholding (Imagen; DPM-Solver++ for pixel-space data prediction): per sample
s = max(1, quantile_p(|D|)), D <- clamp(D, -s, s) / s with p = 0.995, applied to the (guided) D.

The null condition: class labels -> the null label (index num_classes, what label dropout trained);
a denoiser whose condition is something else (text-like tensors) says what its null is by a method
`null_condition(cond)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .conditioning import forwards_of

THRESHOLD_QUANTILE = 0.995  # Imagen's and DPM-Solver's default


@dataclass(frozen=True)
class Guidance:
    """How a conditional model is guided. scale: w (None: no guidance, the conditional model, as w = 1);
    interval: (lo, hi), guide only for lo < sigma <= hi (None: everywhere); threshold: the quantile of
    dynamic thresholding (None: off)."""
    scale: float | None = None
    interval: tuple[float, float] | None = None
    threshold: float | None = None

    def __post_init__(self):
        if self.interval is not None:
            object.__setattr__(self, "interval", tuple(float(v) for v in self.interval))
        if self.scale is not None:
            object.__setattr__(self, "scale", float(self.scale))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def guides(self) -> bool:
        """True when some call combines the two halves (w not in {None, 1})."""
        return self.scale is not None and self.scale != 1.0

    @property
    def active(self) -> bool:
        """True when the model's denoiser is not the plain conditional one."""
        return self.guides or self.threshold is not None

    def normalized(self) -> "Guidance":
        """The same denoiser, said one way: w = 1 (or None) needs no interval and is written None."""
        if not self.guides:
            return Guidance(None, None, self.threshold)
        return self

    def record(self) -> dict | None:
        """What artifacts and results record (None: the plain conditional model)."""
        g = self.normalized()
        if not g.active:
            return None
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(g).items()}

    def describe(self) -> str:
        g = self.normalized()
        if not g.active:
            return "no guidance"
        parts = [] if g.scale is None else [f"w={g.scale:g}"]
        if g.interval is not None:
            parts.append(f"for sigma in ({g.interval[0]:g}, {g.interval[1]:g}]")
        if g.threshold is not None:
            parts.append(f"dynamic thresholding p={g.threshold:g}")
        return ", ".join(parts)

    def errors(self) -> list[str]:
        """Every impossible setting, each naming the fix (empty when fine)."""
        out = []
        if self.scale is not None and not self.scale >= 0:
            out.append(f"guidance.scale={self.scale:g} is negative; use w >= 0 (D = D_u + w (D_c - D_u): 0 is the "
                       "unconditional model, 1 the conditional one, > 1 guides).")
        if self.interval is not None:
            if len(self.interval) != 2:
                out.append(f"guidance.interval={list(self.interval)} must be two sigmas [lo, hi].")
            elif not 0 <= self.interval[0] < self.interval[1]:
                out.append(f"guidance.interval={list(self.interval)}: need 0 <= lo < hi (guidance applies for lo < "
                           "sigma <= hi, e.g. guidance.interval=[0.28,2.9]).")
        if self.threshold is not None and not 0 < self.threshold < 1:
            out.append(f"guidance.threshold={self.threshold:g} is the quantile of dynamic thresholding; use a number "
                       "in (0, 1), e.g. 0.995, or null for none.")
        return out


def from_record(record: dict | None) -> Guidance:
    """The Guidance a record (Guidance.record(), or a manifest's) describes."""
    if not record:
        return Guidance()
    return Guidance(record.get("scale"), record.get("interval"), record.get("threshold")).normalized()


def guided(D_u: Tensor, D_c: Tensor, w) -> Tensor:
    """D_u + w (D_c - D_u); w a number or a per-sample tensor [B]."""
    if isinstance(w, Tensor):
        w = w.to(D_c.dtype).reshape(-1, *([1] * (D_c.ndim - 1)))
    return D_u + w * (D_c - D_u)


def dynamic_threshold(x0: Tensor, quantile: float = THRESHOLD_QUANTILE) -> Tensor:
    """Imagen's dynamic thresholding of a data prediction: per sample s = max(1, quantile(|x0|)), then
    clamp to [-s, s] and divide by s (a no-op for samples already inside [-1, 1])."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat if flat.dtype in (torch.float32, torch.float64) else flat.float(), quantile, dim=1)
    s = s.clamp_min(1.0).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _null_fn(denoiser):
    for owner in (denoiser, getattr(denoiser, "net", None)):  # the denoiser, or the network it adapts
        fn = getattr(owner, "null_condition", None)
        if fn is not None and getattr(owner, "conditional", True):
            return fn
    return None


def knows_null(denoiser) -> bool:
    """True when the denoiser (or its network) says what its "no condition" is: it takes a condition."""
    return _null_fn(denoiser) is not None


def null_condition(denoiser, cond):
    """The "no condition" of a batch with conditions `cond`: the denoiser's (or its network's) own
    null_condition(cond) when it has one, else the null label num_classes for class labels."""
    fn = _null_fn(denoiser)
    if fn is not None:
        return fn(cond)
    K = getattr(denoiser, "num_classes", None)
    if isinstance(cond, Tensor) and not cond.is_floating_point() and K is not None:
        return torch.full_like(cond, int(K))
    raise ValueError("classifier-free guidance needs the unconditional ('null') condition of this model: class "
                     "labels with num_classes, or a denoiser with null_condition(cond).")


def stack(a, b):
    """Two conditions of one batch each as the condition of the stacked batch [a; b] (tensors or dicts)."""
    if isinstance(a, dict):
        return {k: stack(a[k], b[k]) for k in a}
    return torch.cat([a, b])


class Guided(nn.Module):
    """D_w(x, sigma, cond=c) of a conditional denoiser D(x, sigma, cond=c) (module docstring).

    Like the denoiser it wraps it is called with the batch's conditions; Model.denoiser_for binds them."""

    def __init__(self, denoiser: nn.Module, guidance: Guidance):
        super().__init__()
        errors = guidance.errors()
        if errors:
            raise ValueError(" ".join(errors))
        self.denoiser, self.guidance = denoiser, guidance.normalized()

    @property
    def num_classes(self):
        return getattr(self.denoiser, "num_classes", None)

    @property
    def feature_shape(self):
        return getattr(self.denoiser, "feature_shape", None)

    def null_condition(self, cond):
        return null_condition(self.denoiser, cond)

    def weight(self, sigma):
        """w at sigma: the scale inside the interval, 1 outside (a number, or a tensor [B] for per-sample sigmas)."""
        g = self.guidance
        w = 1.0 if g.scale is None else g.scale
        if g.interval is None or w == 1.0:
            return w
        lo, hi = g.interval
        s = torch.as_tensor(sigma, dtype=torch.float64)
        inside = (s > lo) & (s <= hi)
        if s.ndim == 0:
            return w if bool(inside) else 1.0
        return torch.where(inside, torch.full_like(s, w), torch.ones_like(s))

    def batch_weight(self, sigma):
        """The weight of a call: one number when every sample of the batch has the same w, else a tensor [B]."""
        w = self.weight(sigma)
        if isinstance(w, Tensor) and bool((w == w[0]).all()):
            return float(w[0])
        return w

    def forwards(self, sigma) -> int:
        """Network passes of one call: 2 where both halves are needed, else 1 (times the wrapped denoiser's)."""
        w = self.batch_weight(sigma)
        one_half = not isinstance(w, Tensor) and w in (0.0, 1.0)
        return (1 if one_half else 2) * forwards_of(self.denoiser, sigma)

    def forward(self, x: Tensor, sigma, cond=None) -> Tensor:
        return self._call(x, sigma, cond, False)[0]

    def forward_with_features(self, x: Tensor, sigma, cond=None):
        """(D_w, the bottleneck features of the conditional half, or of the one half evaluated)."""
        return self._call(x, sigma, cond, getattr(self.denoiser, "forward_with_features", None) is not None)

    def _net(self, x, sigma, cond, features: bool):
        if features:
            return self.denoiser.forward_with_features(x, sigma, cond=cond)
        return self.denoiser(x, sigma, cond=cond), None

    def _call(self, x: Tensor, sigma, cond, features: bool):
        if cond is None:
            raise ValueError("a guided model is called with the conditions of its samples (cond=...); bind them with "
                             "Model.denoiser_for(cond) or diffode.core.conditioning.bind.")
        w = self.batch_weight(sigma)
        if not isinstance(w, Tensor) and w in (0.0, 1.0):  # one half only, exactly
            D, h = self._net(x, sigma, cond if w == 1.0 else null_condition(self.denoiser, cond), features)
        else:
            n = x.shape[0]
            per_sample = isinstance(sigma, Tensor) and sigma.ndim > 0
            s2 = torch.cat([sigma.reshape(n)] * 2) if per_sample else sigma  # a scalar as given (its dtype too)
            both, h = self._net(torch.cat([x, x]), s2, stack(cond, null_condition(self.denoiser, cond)), features)
            D = guided(both[n:], both[:n], w if not isinstance(w, Tensor) else w.to(x.device))
            h = None if h is None else h[:n]
        if self.guidance.threshold is not None:
            D = dynamic_threshold(D, self.guidance.threshold)
        return D, h


def scales_of(value) -> list:
    """guidance.scale of a config: None, a number, or a list of them (a sweep axis) -> a list (of None or floats)."""
    if value is None or isinstance(value, (int, float, str)):
        value = [value]
    out = []
    for v in value:
        if v is None or (isinstance(v, str) and v.lower() in ("none", "null")):
            out.append(None)
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"guidance.scale={v!r} is not a number; use a scale w >= 0, null, or a list such as "
                             "guidance.scale=[1,2,4].") from None
    return out


def from_config(node) -> list[Guidance]:
    """One Guidance per scale of a `guidance:` config node (scale: a number, null or a list; interval; threshold)."""
    node = node or {}
    get = node.get if hasattr(node, "get") else (lambda k, d=None: d)
    interval = get("interval")
    if interval is not None:
        interval = [float(v) for v in interval]
        if len(interval) != 2:
            raise ValueError(f"guidance.interval={interval} must be two sigmas [lo, hi], e.g. guidance.interval=[0.28,2.9].")
    return [Guidance(s, interval, get("threshold")) for s in scales_of(get("scale"))]
