"""`python -m diffode.ld3 method.solver=ipndm method.nfe=4 model.ckpt=...`: train one LD3 grid.

A dedicated Hydra entry (conf/ld3.yaml, with the method/ld3 group) rather than a branch of the
denoiser training: LD3 trains 2N+2 numbers against a frozen model and needs neither a datamodule
nor checkpoints, only the denoiser (an exact Gaussian mixture or a diffode checkpoint) and its
schedule. `-m method.solver=a,b method.nfe=4,5,6` trains one grid per job; jobs share the
teacher pairs through the on-disk cache. `run(cfg)` is what another entry point would call.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def gmm_denoiser(cfg: DictConfig):
    from diffode.core.denoisers import make_gmm
    from diffode.core.schedules import get_schedule
    from diffode.methods.ld3_teacher import tensor_sha1

    g = OmegaConf.to_container(cfg.model.gmm, resolve=True)
    gmm = make_gmm(**g)
    sched_cfg = OmegaConf.to_container(cfg.model.schedule, resolve=True)
    if "_target_" in sched_cfg:  # a conf/schedule/<name>.yaml node
        from hydra.utils import instantiate

        schedule = instantiate(sched_cfg)
    else:
        schedule = get_schedule(sched_cfg.pop("name"), **sched_cfg)
    model_id = {"kind": "gmm", "params": g, "hash": tensor_sha1(gmm.mu, gmm.lam, gmm.log_pi)}
    return gmm, (gmm.dim,), schedule, model_id, (schedule.sigma_min, schedule.sigma_max)


def ckpt_denoiser(cfg: DictConfig):
    from diffode.methods.denoiser import load_denoiser
    from diffode.methods.ld3_teacher import file_sha256

    path = str(Path(cfg.model.ckpt).expanduser().resolve())
    denoiser, info = load_denoiser(path, ema=cfg.model.get("ema", True))
    model_id = {"kind": "ckpt", "path": path, "sha256": file_sha256(path), "ema": cfg.model.get("ema", True),
                "dataset": info.get("dataset")}
    sched = info["schedule"]
    # The range the model was trained/evaluated on (as diffode eval reads it), else the schedule's.
    lo, hi = float(info.get("sigma_min") or sched.sigma_min), float(info.get("sigma_max") or sched.sigma_max)
    return denoiser, tuple(info["shape"]), sched, model_id, (lo, hi)


def build(cfg: DictConfig):
    """(LD3Module, trainer kwargs) for a composed config."""
    from diffode.core.grids import make_grid
    from diffode.methods.ld3 import LD3Config, LD3Module, steps_for_nfe

    denoiser, shape, schedule, model_id, (lo, hi) = ckpt_denoiser(cfg) if cfg.model.get("ckpt") else gmm_denoiser(cfg)
    m = OmegaConf.to_container(cfg.method, resolve=True)
    m.pop("name", None)
    if m.pop("denoiser_ckpt", None) and not cfg.model.get("ckpt"):
        raise ValueError("with `python -m diffode.ld3` set model.ckpt=<.ckpt> (method.denoiser_ckpt is diffode.train's)")
    ld3 = LD3Config(**m)
    if cfg.model.get("sigma_min") is not None:
        lo = float(cfg.model.sigma_min)
    if cfg.model.get("sigma_max") is not None:
        hi = float(cfg.model.sigma_max)
    init = None
    if ld3.init_grid not in ("uniform", "best"):
        steps = steps_for_nfe(ld3.solver, ld3.nfe, ld3.solver_options)
        init = make_grid(ld3.init_grid, steps, schedule, sigma_min=lo, sigma_max=hi, **ld3.init_grid_options)
    return LD3Module(denoiser, shape, schedule, lo, hi, model_id, ld3, init_sigmas=init)


def run(cfg: DictConfig) -> dict:
    """Train one grid; write the artifact; return it."""
    import lightning as L

    torch.set_num_threads(int(cfg.get("threads") or torch.get_num_threads()))
    L.seed_everything(int(cfg.method.seed), verbose=False)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.method.get("artifact") is None:
        cfg.method.artifact = str(out_dir / "ld3_grid.json")
    module = build(cfg)
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = L.Trainer(max_epochs=cfg.method.rounds_logits + cfg.method.rounds_joint, logger=L.pytorch.loggers.CSVLogger(
        out_dir, name="logs"), enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(out_dir), **tcfg)
    t0 = time.perf_counter()
    trainer.fit(module)
    art = module.artifact()
    art["train_seconds"] = time.perf_counter() - t0
    if trainer.global_rank == 0:
        Path(cfg.method.artifact).write_text(json.dumps(art, indent=1))
        first = next((h["val"] for h in art["history"] if "val" in h), None)
        print(f"LD3 {art['solver']} NFE {art['nfe']}: val {art['val_metric']['distance']} {first:.5g} -> "
              f"{art['val_metric']['value']:.5g} in {art['train_seconds']:.1f}s; grid written to {cfg.method.artifact}")
    return art


def run_from_train_cfg(cfg: DictConfig, out_dir) -> dict:
    """`python -m diffode.train method=ld3 ...`: map conf/train.yaml's composition onto conf/ld3.yaml.

    The denoiser is method.denoiser_ckpt (a diffode checkpoint) or, with dataset=gmm2d / gmm16d,
    the exact mixture denoiser under cfg.schedule. cfg.trainer is used as is."""
    method = OmegaConf.to_container(cfg.method, resolve=True)
    ckpt = method.pop("denoiser_ckpt", None)
    model = {"ckpt": ckpt, "ema": True, "sigma_min": None, "sigma_max": None}
    if not ckpt:
        ds = cfg.dataset
        if "gmm" not in str(ds.get("_target_", "")).lower():
            raise ValueError("method=ld3 learns a grid for a trained model: set method.denoiser_ckpt=<.ckpt>, or use "
                             "dataset=gmm2d / gmm16d for the exact Gaussian-mixture denoiser.")
        model["gmm"] = {"dim": ds.dim, "components": ds.components, "seed": ds.gmm_seed, "spread": ds.spread,
                        "std": ds.std, "layout": ds.layout}
        model["schedule"] = OmegaConf.to_container(cfg.schedule, resolve=True)
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
               if k in ("accelerator", "devices", "strategy", "num_nodes", "precision")}
    ld3_cfg = OmegaConf.create({"method": method, "model": model, "trainer": trainer,
                                "threads": cfg.get("threads"), "out_dir": str(out_dir)})
    return run(ld3_cfg)


@hydra.main(config_path=CONF_DIR, config_name="ld3", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
