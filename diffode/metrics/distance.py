"""The one registry of training distances: d(a, b) -> one distance per sample [B], for LD3, AMED and
consistency distillation (`method.distance`; progressive distillation regresses with its own weighted squared
error, core/distillation.py).

Each entry states how a sample's distance is formed (`reduction`), because methods and papers differ and the
choice sets the loss scale:

    l2            mean over dimensions of (a - b)^2             (LD3's l2; the CM code's mean_flat)
    l2_sum        sum over dimensions of (a - b)^2, |a - b|^2    (AMED's paper)
    l1            mean over dimensions of |a - b|
    pseudo_huber  sqrt(|a - b|^2 + c^2) - c on the per-sample norm, c = 0.00054 sqrt(d) unless given (iCT)
    lpips         LPIPS network distance (images; diffode.metrics.lpips, needs its ImageNet backbone)
    digits_perceptual  an LPIPS-style distance on a digits classifier that is not the FID one (8x8 digits)

Network distances carry their network as `d.net` (None for the others), so a LightningModule can hold it as
a submodule that follows its device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from diffode.core.distances import l1, l2, l2_sum, pseudo_huber


@dataclass(frozen=True)
class DistanceSpec:
    name: str
    build: Callable[..., Callable]  # (**options) -> d(a, b) -> [B]
    reduction: str  # how one sample's distance is formed (said in errors and docs)
    shape: str = "any"  # "any" | "images" (3-D samples) | "digits" (1 x 8 x 8)
    weights: bool = False  # needs pretrained weights on disk (lpips)


DISTANCES: dict[str, DistanceSpec] = {}


def register_distance(name: str, reduction: str, shape: str = "any", weights: bool = False):
    def wrap(build):
        DISTANCES[name] = DistanceSpec(name, build, reduction, shape, weights)
        return build

    return wrap


# -- the plain distances (diffode/core/distances.py) --------------------------------------------------

register_distance("l2", "mean over dimensions of (a - b)^2")(lambda **o: l2)
register_distance("l2_sum", "sum over dimensions of (a - b)^2 (AMED's paper)")(lambda **o: l2_sum)
register_distance("l1", "mean over dimensions of |a - b|")(lambda **o: l1)


@register_distance("pseudo_huber", "sqrt(|a - b|^2 + c^2) - c of the per-sample norm (iCT)")
def _pseudo_huber(huber_c: float | None = None, **o):
    return lambda a, b: pseudo_huber(a, b, huber_c)


# -- network distances -------------------------------------------------------------------------------

@register_distance("lpips", "LPIPS network distance per image", shape="images", weights=True)
def _lpips(lpips_net: str = "vgg", random_backbone: bool = False, **o):
    # diffode.metrics.lpips gives 3 channels and >= 32x32 to small/grey images, and refuses to run
    # without the pretrained backbone unless random_backbone (tests only) is asked for.
    from diffode.metrics.lpips import LPIPS

    net = LPIPS(lpips_net, random_backbone=random_backbone)

    def d(a, b):
        if a.ndim != 4:
            raise ValueError(f"LPIPS needs images [B, C, H, W], got shape {tuple(a.shape)}; use distance=l2 or l1")
        return net(a, b).to(a.dtype)

    d.net = net
    return d


@register_distance("digits_perceptual", "LPIPS-style distance on a second digits classifier", shape="digits")
def _digits_perceptual(**o):
    from diffode.metrics.digits_perceptual import DigitsPerceptual

    net = DigitsPerceptual()

    def d(a, b):
        return net(a, b)

    d.net = net
    return d


def make_distance(name: str, **options) -> Callable:
    """d(a, b) -> [B] of a registered distance; d.net is its network (None for the plain ones). Options each
    builder takes: huber_c (pseudo_huber), lpips_net and random_backbone (lpips)."""
    if name not in DISTANCES:
        raise ValueError(f"unknown distance {name!r}; choose one of {', '.join(DISTANCES)}")
    d = DISTANCES[name].build(**options)
    if not hasattr(d, "net"):
        plain = d
        d = lambda a, b: plain(a, b)  # noqa: E731  (a fresh function, so the attribute is not shared)
        d.net = None
    return d


def distance_errors(name: str, shape=None, lpips_net: str = "vgg", random_backbone: bool = False,
                    instead: str = "l2") -> list[str]:
    """Why method.distance=name cannot serve a model whose samples have this shape (None: not known yet).

    lpips also needs its pretrained backbone on disk (unless random_backbone, for tests): a missing file is
    said here, at config time, with the command that fetches it. instead: the distance(s) to suggest.
    """
    spec = DISTANCES.get(name)
    if spec is None:
        return [f"method.distance={name!r} is unknown; choose one of {', '.join(DISTANCES)}."]
    if spec.shape == "images" and shape is not None and len(shape) != 3:
        return [f"method.distance={name} needs images but the model's samples have shape {tuple(shape)}; "
                f"use method.distance={instead}."]
    if spec.shape == "digits" and shape is not None and tuple(shape) != (1, 8, 8):
        return [f"method.distance={name} compares 8x8 grey digits but the model's samples have shape "
                f"{tuple(shape)}; use method.distance={instead} (or lpips for larger images)."]
    if spec.weights and not random_backbone:
        from diffode.metrics.weights import MissingWeightsError, require_weights

        try:
            require_weights(f"lpips-{lpips_net}")
        except (MissingWeightsError, ValueError) as e:
            return [f"method.distance={name}: {e} Or use method.distance={instead}."]
    return []
