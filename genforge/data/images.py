"""Images: a folder with one subfolder per class, single image files, and tensor augmentation."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from genforge.data.registry import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}


def load_image(path: str | Path | bytes, channels: int | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
    """One image file (or its encoded bytes) -> uint8 tensor (C, H, W). `channels` 1 or 3
    converts; `size` (H, W) resizes with bilinear filtering."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(path, (bytes, bytearray)):  # an encoded image already in memory
        src, path = io.BytesIO(path), "the uploaded image"
    else:
        src = path = Path(path)
    try:
        with Image.open(src) as im:
            mode = {1: "L", 3: "RGB"}.get(channels or 0, "RGB" if im.mode not in ("L", "1") else "L")
            im = im.convert(mode)
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} is not a readable image ({e.__class__.__name__}); use PNG or "
                        "JPEG files") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_image_folder(root: str | Path, channels: int | None = None,
                      size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`root/<class>/<image>` -> (uint8 images (N, C, H, W), labels (N,), class names).

    All images are converted to the channel count and size of the first one unless
    `channels` / `size` are given."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class subfolders; expected {root}/<class name>/<image>.png")
    images, labels = [], []
    for ci, cname in enumerate(classes):
        files = sorted(p for p in (root / cname).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name.lower() not in _IGNORED)
        for f in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{f} is not an image file (expected one of "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))}); move it out of the "
                                "image folder")
            img = load_image(f, channels, size)
            if channels is None:
                channels = img.shape[0]
            if size is None:
                size = (img.shape[1], img.shape[2])
            images.append(img)
            labels.append(ci)
    if not images:
        raise DataError(f"{root}: the class folders hold no images")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 0,
                     flip: bool = False) -> torch.Tensor:
    """Batched augmentation as tensor ops: random crop after zero padding by `pad` pixels,
    and a random horizontal flip. x: (B, C, H, W) float."""
    B, C, H, W = x.shape
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        # gather the crop with index arithmetic instead of a Python loop over the batch
        rows = (dy[:, None] + torch.arange(H)[None, :])  # (B, H)
        cols = (dx[:, None] + torch.arange(W)[None, :])  # (B, W)
        b = torch.arange(B)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
    if flip:
        mask = torch.rand(B, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x
