"""Image grids and PNG files.

`make_grid` tiles a batch (N, C, H, W) in [0, 1] into one uint8 image; `png_bytes` /
`write_png` encode an (H, W) grey or (H, W, 3) RGB uint8 array with Pillow.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int = 0, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] -> (rows*(H+p)+p, nrow*(W+p)+p[, 3]) uint8 tensor.

    `nrow` images per row (0 = as square as possible). C must be 1 (grey) or 3 (RGB)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1|3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("cannot make a grid of zero images")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i].detach().float().cpu()
    grid = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    return grid[0] if c == 1 else grid.permute(1, 2, 0).contiguous()  # (H, W) or (H, W, 3)


def png_bytes(pixels: torch.Tensor) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint8 tensor as an 8-bit PNG."""
    if pixels.dtype != torch.uint8 or pixels.dim() not in (2, 3) or (pixels.dim() == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) tensor, got {pixels.dtype} {tuple(pixels.shape)}")
    buf = io.BytesIO()
    Image.fromarray(pixels.cpu().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | Path, pixels: torch.Tensor) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(png_bytes(pixels))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_grid(path: str | Path, images: torch.Tensor, nrow: int = 0, padding: int = 2) -> Path:
    """Tile `images` (N, C, H, W) in [0, 1] and write them as one PNG."""
    return write_png(path, make_grid(images, nrow=nrow, padding=padding))
