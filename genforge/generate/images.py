"""Image grids and a dependency-free PNG writer (zlib + struct, PNG spec ISO/IEC 15948).

`make_grid` tiles a batch (N, C, H, W) in [0, 1] into one uint8 image; `write_png` saves an
(H, W) grey or (H, W, 3) RGB uint8 array. No torchvision, no Pillow needed.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import torch


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
    h, w = pixels.shape[:2]
    color_type = 0 if pixels.dim() == 2 else 2  # 0 = greyscale, 2 = truecolour
    rows = pixels.reshape(h, -1).numpy()  # (H, W*channels)
    # every scanline starts with filter type 0 (None)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


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
