"""The scale of the digits metrics: what REAL digits score, against the same reference as every sample.

    python experiments/digits_fid/real_digits.py

FID (the digits classifier's features, the `diffode eval` protocol: 8-bit images against the statistics of
the 1437 training digits) and the confident share (the classifier's max probability >= 0.9) of the 360
held-out digits, which no model or classifier saw (the floor of a 360-image FID) and of the training digits
themselves (FID ~0: the sanity check). `diffode eval` scores samples only, so this stays a script.
"""
from omegaconf import OmegaConf

from diffode.data.digits import load_digits_tensors
from diffode.evaluation.metrics import FIDMetrics
from diffode.models import load_model


def main():
    fcfg = OmegaConf.create({"reference": "digits", "features": "digits", "batch_size": 2000, "bootstrap": 0})
    metrics = FIDMetrics(load_model({"kind": "checkpoint", "path": None}), fcfg)  # the model only names the data
    print("| real digits | n | FID vs the training split | confident share |")
    print("|---|---|---|---|")
    for split in ("heldout", "train"):
        x = load_digits_tensors(split)[0]
        m = metrics(x, None)
        print(f"| {split} | {len(x)} | {m['fid']:.4g} | {m['confident']:.3f} |")


if __name__ == "__main__":
    main()
