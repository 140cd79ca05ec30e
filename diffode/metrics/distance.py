"""The training distances of the learned samplers: d(a, b) -> per-sample distance [B].

l2 and l1 average over the dimensions; lpips (images, diffode.metrics.lpips: needs the ImageNet
backbone) and digits_perceptual (8x8 digits, diffode.metrics.digits_perceptual) carry their network
as `d.net`, so a LightningModule can hold it as a submodule that follows its device.
"""
from __future__ import annotations

DISTANCES = ("lpips", "l2", "l1", "digits_perceptual")


def distance_errors(name: str, shape=None, choices=DISTANCES, lpips_net: str = "vgg", random_backbone: bool = False,
                    instead: str = "l2") -> list[str]:
    """Why method.distance=name cannot serve a model whose samples have this shape (None: not known yet).

    lpips also needs its pretrained backbone on disk (unless random_backbone, for tests): a missing file is
    said here, at config time, with the command that fetches it. instead: the distance(s) to suggest.
    """
    if name not in choices:
        return [f"method.distance={name!r} is unknown; choose one of {', '.join(choices)}."]
    if name == "lpips" and shape is not None and len(shape) != 3:
        return [f"method.distance=lpips needs images but the model's samples have shape {tuple(shape)}; "
                f"use method.distance={instead}."]
    if name == "lpips" and not random_backbone:
        from diffode.metrics.weights import MissingWeightsError, require_weights

        try:
            require_weights(f"lpips-{lpips_net}")
        except (MissingWeightsError, ValueError) as e:
            return [f"method.distance=lpips: {e} Or use method.distance={instead}."]
    if name == "digits_perceptual" and shape is not None and tuple(shape) != (1, 8, 8):
        return [f"method.distance=digits_perceptual compares 8x8 grey digits but the model's samples have shape "
                f"{tuple(shape)}; use method.distance={instead} (or lpips for larger images)."]
    return []


def make_distance(name: str, lpips_net: str = "vgg", random_backbone: bool = False):
    if name == "l2":
        return lambda a, b: (a - b).flatten(1).pow(2).mean(1)
    if name == "l1":
        return lambda a, b: (a - b).flatten(1).abs().mean(1)
    if name == "lpips":
        # diffode.metrics.lpips gives 3 channels and >= 32x32 to small/grey images, and refuses to run
        # without the pretrained backbone unless random_backbone (tests only) is asked for.
        from diffode.metrics.lpips import LPIPS

        net = LPIPS(lpips_net, random_backbone=random_backbone)

        def d(a, b):
            if a.ndim != 4:
                raise ValueError(f"LPIPS needs images [B, C, H, W], got shape {tuple(a.shape)}; use distance=l2 or l1")
            return net(a, b).to(a.dtype)
    elif name == "digits_perceptual":
        from diffode.metrics.digits_perceptual import DigitsPerceptual

        net = DigitsPerceptual()

        def d(a, b):
            return net(a, b)
    else:
        raise ValueError(f"unknown distance {name!r}; choose one of {DISTANCES}")
    d.net = net
    return d
