"""Digits sample quality: the share of 1000 samples that the project's digits classifier
(diffode.metrics.digits_classifier, trained on the training split only) labels with
probability >= 0.9, next to the same share for the 360 real held-out digits.

    python experiments/train_digits/quality.py [--ckpt diffode/assets/digits_unet.ckpt] [--nfe 36]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffode.core.sample import sample
from diffode.data.digits import load_digits_tensors
from diffode.models import load_denoiser
from diffode.methods.visual import image_grid, save_png
from diffode.metrics.digits_classifier import load_classifier, predict_proba

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(ROOT / "diffode" / "assets" / "digits_unet.ckpt"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--solver", default="heun")
    ap.add_argument("--nfe", type=int, default=36)
    ap.add_argument("--grid", default="edm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)

    D, info = load_denoiser(a.ckpt)
    g = torch.Generator().manual_seed(a.seed)
    x_T = info["sigma_max"] * torch.randn(a.n, *info["shape"], generator=g, dtype=torch.float64)
    with torch.no_grad():
        x = torch.cat([sample(D, xb, solver=a.solver, nfe=a.nfe, grid=a.grid, schedule=info["schedule"])
                       for xb in x_T.split(250)]).float().clamp(-1, 1)
    real, _ = load_digits_tensors("heldout")
    p_gen, p_real = predict_proba(x), predict_proba(real)
    _, cls_info = load_classifier()
    res = {
        "checkpoint": str(a.ckpt), "solver": a.solver, "nfe": a.nfe, "grid": a.grid, "n_samples": a.n,
        "threshold": a.threshold,
        "share_confident_samples": float((p_gen.max(-1).values >= a.threshold).float().mean()),
        "share_confident_real_heldout": float((p_real.max(-1).values >= a.threshold).float().mean()),
        "n_real_heldout": len(real),
        "classifier_heldout_accuracy": cls_info.get("heldout_accuracy"),
        "sample_label_histogram": torch.bincount(p_gen.argmax(-1), minlength=10).tolist(),
        "training_steps": info["global_step"],
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_png(image_grid(x[:100]), out / f"samples_{a.solver}_nfe{a.nfe}.png")
    (out / f"quality_{a.solver}_nfe{a.nfe}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
