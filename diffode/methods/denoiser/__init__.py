"""Denoiser training (eps / x0 / v / flow-matching velocity / EDM losses): `diffode train method=denoiser` (the default).

Needs data and a network (conf/dataset/, conf/net/, conf/schedule/); exports denoiser_ema.ckpt, the
small EMA-weights checkpoint every `source=checkpoint` loads, and a final EMA sample grid.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..registry import Context, lazy_exports, register_method
from .options import DenoiserOptions

__getattr__ = lazy_exports(__name__, {"DenoiserModule": ".module", "NonFiniteLossError": ".module",
                                      "load_denoiser": "diffode.models", "export_denoiser": "diffode.models"})


def _net_spec(ctx: Context) -> dict:
    net = dict(ctx.net or {})
    if "dim" in net and net["dim"] is None and ctx.datamodule is not None:
        net["dim"] = int(ctx.datamodule.shape[0])  # the MLP's input follows vector data
    return net


def _net_shape(net: dict):
    target = str(net.get("_target_", ""))
    if target.endswith("UNet"):
        return "UNet", (net.get("in_channels"), net.get("resolution"), net.get("resolution"))
    if target.endswith("MLP"):
        return "MLP", (net.get("dim"),)
    return target, None


def check(options: DenoiserOptions, ctx: Context) -> list[str]:
    from diffode.core.denoisers import straight_path
    from diffode.spec import build as build_spec

    errors = []
    schedule = None
    try:
        schedule = build_spec(dict(ctx.schedule))
    except (ValueError, TypeError) as e:
        errors.append(f"schedule: {e}")
    if schedule is not None and options.prediction == "velocity" and not straight_path(schedule):
        errors.append(f"method.prediction=velocity is flow matching's eps - x0, the velocity of the straight path "
                      f"alpha + sigma = 1, but schedule={schedule.name} curves; use schedule=flow (a flow-matching "
                      "model), or method.prediction=v for the VP velocity of Salimans & Ho.")
    if options.prediction == "edm" and options.t_sampling == "uniform":
        errors.append("method.prediction=edm trains with EDM's log-normal sigma; remove method.t_sampling=uniform "
                      "(it only applies to eps/x0/v predictions).")
    if not options.lr > 0:
        errors.append(f"method.lr={options.lr} must be positive, e.g. method.lr=2e-4.")
    labels = getattr(ctx.datamodule, "num_classes", None)
    classes = _net_spec(ctx).get("num_classes")
    if classes is not None and labels is None:
        errors.append(f"net.num_classes={classes} makes a class-conditional net, but dataset="
                      f"{getattr(ctx.datamodule, 'name', '?')} has no labels; use a labelled dataset (digits, mnist, "
                      "cifar10) or net.num_classes=null.")
    elif classes is not None and int(classes) != int(labels):
        errors.append(f"net.num_classes={classes} but dataset={getattr(ctx.datamodule, 'name', '?')} has {labels} "
                      f"classes; set net.num_classes={labels}.")
    if not 0 <= options.p_uncond < 1:
        errors.append(f"method.p_uncond={options.p_uncond} must be in [0, 1) (the label-dropout probability of "
                      "classifier-free guidance; Ho & Salimans use 0.1-0.2).")
    if options.ema is not None and not 0 <= options.ema.decay < 1:
        errors.append(f"method.ema.decay={options.ema.decay} must be in [0, 1) (0 turns EMA off).")
    data_shape = tuple(ctx.datamodule.shape)
    kind, net_shape = _net_shape(_net_spec(ctx))
    if net_shape is not None and tuple(net_shape) != data_shape:
        name = getattr(ctx.datamodule, "name", "?")
        if kind == "MLP" and len(data_shape) != 1:
            errors.append(f"net=mlp is for vector data but dataset={name} has images of shape {data_shape}; use "
                          "net=unet_digits (8x8 digits) or net=unet_cifar (32x32), or a vector dataset (gmm2d, gmm16d).")
        elif kind == "UNet" and len(data_shape) != 3:
            errors.append(f"a UNet needs images but dataset={name} has vectors of shape {data_shape}; use net=mlp.")
        else:
            errors.append(f"net input shape {net_shape} does not match dataset={name} samples of shape {data_shape}; "
                          "set net.in_channels / net.resolution (or net.dim) to match.")
    errors += _high_order_errors(options, ctx)
    if options.n_samples > 0:
        from ...core.sample import check_sampling_config

        try:
            check_sampling_config("heun", options.sample_nfe, "edm")
        except ValueError as e:
            errors.append(f"method.sample_nfe={options.sample_nfe} (the sample grid's Heun solve): {e}")
    return errors


def _init_path(options: DenoiserOptions):
    from ...models import checkpoint_path

    ic = options.init_checkpoint
    return None if ic in (None, "") else checkpoint_path({"path": None if ic == "shipped" else ic})


def _high_order_errors(options: DenoiserOptions, ctx: Context) -> list[str]:
    """score_order, hdsm_*, dequantize and init_checkpoint (fine-tuning, as Lu et al. do)."""
    errors = []
    if options.score_order not in (1, 2, 3):
        errors.append(f"method.score_order={options.score_order!r} must be 1 (DSM), 2 or 3 (Lu et al. 2022's "
                      "high-order DSM).")
    if not options.hdsm_weight >= 0:
        errors.append(f"method.hdsm_weight={options.hdsm_weight} must be >= 0 (the paper: 1).")
    if options.dequantize:
        from ...data.dequantize import bin_width

        name = getattr(ctx.datamodule, "name", "?")
        if bin_width(name) is None:
            errors.append(f"method.dequantize=true needs discrete data (digits, mnist, cifar10) but dataset={name} is "
                          "continuous; drop method.dequantize.")
    path = _init_path(options)
    if path is not None:
        if not path.is_file():
            errors.append(f"method.init_checkpoint={options.init_checkpoint!r}: no file at {str(path)!r}; give the "
                          "path of a denoiser_ema.ckpt (or 'shipped' for the digits UNet).")
        else:
            import torch

            hp = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
            mine = {"net": _net_spec(ctx), "schedule": dict(ctx.schedule or {}), "prediction": str(options.prediction)}
            theirs = {"net": hp["net"], "schedule": hp["schedule"], "prediction": hp["prediction"]}
            differ = [k for k in mine if _plain(mine[k]) != _plain(theirs[k])]
            if differ:
                errors.append(f"method.init_checkpoint={options.init_checkpoint!r} was trained with other "
                              f"{', '.join(differ)} ({', '.join(f'{k}={theirs[k]}' for k in differ)}); fine-tune with "
                              "the same settings (experiment=digits for the shipped UNet) or start from scratch.")
    return errors


def _plain(v):
    """Plain data to compare; a dict's null entries dropped (a key an older checkpoint lacks, such as
    net.num_classes, stands for its null default)."""
    from omegaconf import OmegaConf

    v = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return {k: x for k, x in v.items() if x is not None} if isinstance(v, dict) else v


def export(module, ctx: Context) -> dict:
    """denoiser_ema.ckpt from last.ckpt, and a final sample grid with those EMA weights."""
    from ...models import export_denoiser, load_denoiser

    last = Path(ctx.out_dir) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return {}
    path = export_denoiser(last, Path(ctx.out_dir) / "denoiser_ema.ckpt", ema=True)
    D, info = load_denoiser(path)
    module.denoiser.load_state_dict(D.state_dict())
    # after ddp_spawn the main process's module is not attached to a trainer: the step comes from the file
    module.log_samples(int(info["global_step"] or 0))
    return {"ema_checkpoint": str(path)}


@register_method("denoiser", options=DenoiserOptions, needs_data=True, check=check, export=export,
                 description="train a denoiser (eps / x0 / v / flow-matching velocity / EDM)")
def build(options: DenoiserOptions, ctx: Context):
    from .module import DenoiserModule

    hparams = {k: v for k, v in asdict(options).items() if k != "name"}  # plain data: the checkpoint's hparams
    module = DenoiserModule(net=_net_spec(ctx), schedule=dict(ctx.schedule), data=ctx.datamodule.info(),
                            seed=ctx.seed, out_dir=str(ctx.out_dir), **hparams)
    if hasattr(ctx.datamodule, "analytic_denoiser"):
        module.analytic = ctx.datamodule.analytic_denoiser()  # scatter plots over the true density
    path = _init_path(options)
    if path is not None:  # fine-tuning: start from the checkpoint's (EMA) weights
        module.denoiser.load_state_dict(load_denoiser(path)[0].state_dict())
    return module
