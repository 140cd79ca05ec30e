"""Small CNN classifiers of the 8x8 digits: FID features, a quality check, and a perceptual distance.

Trained on the training split of diffode.data.digits (held-out 20% never seen), with small
random shifts as augmentation. Two of them ship in diffode/assets with their held-out accuracy:

- `fid` (digits_classifier.pt, width 32, seed 0): its penultimate layer (128-d, post-ReLU, like
  Inception's pool3) is the FID feature net for digits;
- `perceptual` (digits_perceptual.pt, width 16, seed 1): the backbone of the digits perceptual
  distance (diffode/metrics/digits_perceptual.py), a different network from the FID one, as LPIPS'
  VGG is not FID's Inception, so that a method trained on that distance is not trained on the metric.

When a file is missing its classifier is trained on first use (under a minute on 2 CPU cores) and cached.

    python -m diffode.metrics.digits_classifier [fid|perceptual]   # retrain and write the shipped asset
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

def _asset(name: str = "digits_classifier.pt") -> Path:
    from diffode.config import asset

    return asset(name)  # shipped in the package (diffode/assets)


TRAIN = dict(epochs=60, batch_size=64, lr=2e-3, weight_decay=1e-4, max_shift=1, seed=0, width=32)
# kind -> (shipped file, training options over TRAIN)
KINDS = {"fid": ("digits_classifier.pt", {}), "perceptual": ("digits_perceptual.pt", dict(seed=1, width=16))}


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32, n_features: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(2 * width * 16, n_features), nn.ReLU(),
        )
        self.head = nn.Linear(n_features, 10)
        self.n_features = n_features

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _random_shift(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Shift each image by up to max_shift pixels (zero padding = background -1)."""
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    H, W = x.shape[-2:]
    return torch.stack([pad[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(n)])


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def train_classifier(epochs: int = TRAIN["epochs"], batch_size: int = TRAIN["batch_size"], lr: float = TRAIN["lr"],
                     weight_decay: float = TRAIN["weight_decay"], max_shift: int = TRAIN["max_shift"],
                     seed: int = TRAIN["seed"], width: int = TRAIN["width"],
                     verbose: bool = False) -> tuple[DigitsCNN, dict]:
    from diffode.data.digits import load_digits_tensors

    x, y = load_digits_tensors("train")
    x_val, y_val = load_digits_tensors("heldout")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitsCNN(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            xb = _random_shift(x[idx], max_shift, g) if max_shift else x[idx]
            loss = F.cross_entropy(model(xb), y[idx].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if verbose and (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}  held-out acc {accuracy(model, x_val, y_val):.4f}")
    model.eval()
    info = dict(heldout_accuracy=accuracy(model, x_val, y_val), train_accuracy=accuracy(model, x, y),
                n_train=len(x), n_heldout=len(x_val), train_config=dict(epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, max_shift=max_shift, seed=seed, width=width))
    return model, info


def save_classifier(model: DigitsCNN, info: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)


def _cached_path(kind: str = "fid") -> Path:
    from diffode.config import cache_dir

    return cache_dir() / KINDS[kind][0]


@lru_cache(maxsize=2)
def load_classifier(kind: str = "fid") -> tuple[DigitsCNN, dict]:
    """The shipped classifier of this kind (KINDS), else the one cached from a first-use training, else
    train it now."""
    if kind not in KINDS:
        raise ValueError(f"unknown digits classifier {kind!r}; choose one of {', '.join(KINDS)}")
    name, over = KINDS[kind]
    for path in (_asset(name), _cached_path(kind)):
        if path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitsCNN(blob["info"]["train_config"].get("width", TRAIN["width"]))
            model.load_state_dict(blob["state_dict"])
            model.eval().requires_grad_(False)
            digest = hashlib.sha1(path.read_bytes()).hexdigest()[:8]
            return model, {**blob["info"], "path": str(path), "sha1": digest}
    model, info = train_classifier(**over)
    save_classifier(model, info, _cached_path(kind))
    load_classifier.cache_clear()
    return load_classifier(kind)


class DigitsFeatures(nn.Module):
    """FID feature net for digits: the classifier's 128-d penultimate layer, float64 out."""

    def __init__(self):
        super().__init__()
        model, info = load_classifier()
        self.model = model
        self.num_features = model.n_features
        self.cache_id = f"digits_cnn-{info['sha1']}"

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x.float()).double()


def predict_proba(images: Tensor, batch_size: int = 2000) -> Tensor:
    model, _ = load_classifier()
    with torch.no_grad():
        return torch.cat([F.softmax(model(b.float()), -1) for b in images.split(batch_size)])


def confident_share(images: Tensor, thr: float = 0.9) -> float:
    """Share of images the classifier labels with max probability >= thr (a sample-quality proxy)."""
    return float((predict_proba(images).max(-1).values >= thr).float().mean())


if __name__ == "__main__":
    import sys

    kind = sys.argv[1] if len(sys.argv) > 1 else "fid"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, info = train_classifier(**KINDS[kind][1], verbose=True)
    path = _asset(KINDS[kind][0])
    save_classifier(model, info, path)
    print(f"wrote {path}: held-out accuracy {info['heldout_accuracy']:.4f} on {info['n_heldout']} images")
