"""Pictures a researcher reads: sample grids large enough to see, with their name on them, and
matplotlib figures that leave the global backend alone.

An 8x8-digit grid is 82 pixels wide; shown as is, a viewer blurs it to nothing. `readable` scales
it up by a whole factor with nearest-neighbour (every source pixel becomes a constant block, so
nothing is invented) to at least `MIN_PX` wide, and writes a title band above it. `save_grid`
also records the grid's layout in the PNG (a text chunk), so `grid_tiles` can cut the samples out
again, exactly, for a contact sheet.

`figure()` gives a `matplotlib.figure.Figure` with its own Agg canvas: no `pyplot`, no
`matplotlib.use()`, so a notebook that imports diffode keeps its inline backend and no figure is
left open in pyplot's registry.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

MIN_PX = 512  # the least width of a saved sample grid
LAYOUT_KEY = "diffode.grid"  # the PNG text chunk holding a saved grid's layout


def tile(images: np.ndarray, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [H', W', C] grid, `nrow` images per row (default: square),
    white between them."""
    n, h, w, c = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    out = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, np.uint8)
    for i, im in enumerate(images):
        y, x = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        out[y:y + h, x:x + w] = im
    return out


def to_uint8(x) -> np.ndarray:
    """A torch [N, C, H, W] batch in [-1, 1] -> uint8 [N, H, W, C], rounded as a saved PNG is."""
    import torch

    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def image_grid(x, padding: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [H', W', C] grid (C = 1 or 3), white between the images."""
    return tile(to_uint8(x), padding=padding)


def upscale_factor(width: int, min_px: int = MIN_PX) -> int:
    """The whole factor that brings an image `width` pixels wide to at least min_px."""
    return max(1, math.ceil(min_px / max(1, width)))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def readable(arr: np.ndarray, title: str = "", min_px: int = MIN_PX) -> np.ndarray:
    """uint8 [H, W, C] -> RGB uint8, nearest-neighbour upscaled by a whole factor to >= min_px wide,
    with `title` (one or more lines) in a white band above the image."""
    from PIL import Image, ImageDraw

    k = upscale_factor(arr.shape[1], min_px)
    big = np.repeat(np.repeat(arr, k, axis=0), k, axis=1)
    big = np.repeat(big, 3, axis=2) if big.shape[2] == 1 else big[..., :3]
    if not title:
        return big
    size = max(14, big.shape[1] // 30)
    lines = title.split("\n")
    band = int(size * (0.7 + 1.3 * len(lines)))
    canvas = Image.new("RGB", (big.shape[1], big.shape[0] + band), "white")
    canvas.paste(Image.fromarray(big), (0, band))
    ImageDraw.Draw(canvas).multiline_text((size // 2, size // 3), title, fill="black", font=_font(size),
                                          spacing=int(0.3 * size))
    return np.asarray(canvas)


def save_png(arr: np.ndarray, path: Path, text: dict | None = None) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path, pnginfo=info)
    return path


def save_grid(x, path: Path, title: str = "") -> Path:
    """A readable, titled grid of the images x ([N, C, H, W] in [-1, 1]), its layout in the PNG."""
    images = to_uint8(x)
    grid = tile(images)
    big = readable(grid, title)
    n, h, w, c = images.shape
    layout = dict(n=n, h=h, w=w, c=c, padding=1, nrow=int(math.ceil(math.sqrt(n))),
                  scale=upscale_factor(grid.shape[1]), top=big.shape[0] - upscale_factor(grid.shape[1]) * grid.shape[0])
    return save_png(big, path, {LAYOUT_KEY: json.dumps(layout)})


def grid_tiles(path: Path) -> np.ndarray | None:
    """The images of a grid saved by save_grid, uint8 [N, H, W, C]; None for any other PNG."""
    from PIL import Image

    with Image.open(path) as im:
        spec = getattr(im, "text", {}).get(LAYOUT_KEY)
        arr = np.asarray(im.convert("RGB"))
    if not spec:
        return None
    s = json.loads(spec)
    grid = arr[s["top"]::s["scale"], ::s["scale"]]  # undo the nearest-neighbour upscaling exactly
    p, h, w = s["padding"], s["h"], s["w"]
    out = [grid[p + (i // s["nrow"]) * (h + p):][:h, p + (i % s["nrow"]) * (w + p):][:, :w] for i in range(s["n"])]
    out = np.stack(out)
    return out[..., :1] if s["c"] == 1 else out


def contact_sheet(entries: list[tuple[str, Path]], path: Path, per_row: int = 16) -> Path:
    """One band per (caption, sample PNG). Grids saved by save_grid are re-tiled `per_row` images to a
    row, one band under the other, so a column holds the same seed in every band; other pictures
    (the mixtures' scatter plots) are shown whole at a common width, three bands to a row."""
    from PIL import Image

    bands, grids = [], True
    for caption, png in entries:
        tiles = grid_tiles(png)
        if tiles is not None:
            bands.append(readable(tile(tiles, nrow=min(per_row, len(tiles))), caption))
            continue
        grids = False
        with Image.open(png) as im:
            im = im.convert("RGB")
            im = im.resize((400, round(400 * im.height / im.width)), Image.LANCZOS)
            bands.append(readable(np.asarray(im), caption, min_px=400))
    cols, gap = (1 if grids else min(3, len(bands))), 16
    rows = [bands[i:i + cols] for i in range(0, len(bands), cols)]
    width = max(sum(b.shape[1] + gap for b in row) - gap for row in rows)
    height = sum(max(b.shape[0] for b in row) + gap for row in rows) - gap
    sheet = np.full((height, width, 3), 255, np.uint8)
    y = 0
    for row in rows:
        x = 0
        for b in row:
            sheet[y:y + b.shape[0], x:x + b.shape[1]] = b
            x += b.shape[1] + gap
        y += max(b.shape[0] for b in row) + gap
    return save_png(sheet, path)


def figure(**kwargs):
    """A Figure drawn by its own Agg canvas (fig.savefig, fig.canvas.buffer_rgba); touches no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig
