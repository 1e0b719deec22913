"""Images: single image files, a folder with one subfolder per class, the one loader of
labelled image datasets into train/val/test splits (`load_image_splits`), and tensor
augmentation."""
from __future__ import annotations

import functools
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genforge.data import registry
from genforge.data.batching import SPLIT_SEED, carve
from genforge.data.registry import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}


# The pixel cap on decoding. A PNG of 15000x15000 pixels compresses to 36 KB and decodes to
# 675 MB (a "decompression bomb"), so the size the header declares is checked before any
# pixel is decoded. The default cap is several times the model's input, and at least
# 4096x4096 so that any camera photo passes (it is resized to the model's input anyway).
MIN_MAX_IMAGE_PIXELS = 4096 * 4096
INPUT_MULTIPLE = 64


def max_image_pixels(size: tuple[int, int] | None = None, setting: int = 0) -> int:
    """The pixel cap: `setting` when it is set (> 0), else the default for an input `size` (H, W)."""
    if setting > 0:
        return setting
    if size is None:
        return MIN_MAX_IMAGE_PIXELS
    return max(MIN_MAX_IMAGE_PIXELS, INPUT_MULTIPLE * size[0] * size[1])


@functools.cache
def _pil():
    from PIL import Image

    # our cap (checked right after the header is read) replaces Pillow's warning at 89
    # megapixels; Pillow's own DecompressionBombError (past 179 megapixels) is kept and answered
    # as the same clear error
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def load_image(path: str | Path | bytes, channels: int | None = None,
               size: tuple[int, int] | None = None, max_pixels: int = 0) -> torch.Tensor:
    """One image file (or its encoded bytes) -> uint8 tensor (C, H, W). `channels` 1 or 3
    converts; `size` (H, W) resizes with bilinear filtering. An image declaring more than
    `max_pixels` pixels (0 = the default for `size`, see max_image_pixels) is refused with a
    DataError before it is decoded."""
    from PIL import UnidentifiedImageError

    Image = _pil()
    if isinstance(path, (bytes, bytearray)):  # an encoded image already in memory
        src, path = io.BytesIO(path), "the uploaded image"
    else:
        src = path = Path(path)
    limit = max_image_pixels(size, max_pixels)

    def too_big(width: int, height: int) -> DataError:
        return DataError(f"{path} is {width}x{height} pixels ({width * height:,}), more than the "
                         f"limit of {limit:,} pixels (max_image_pixels); shrink the image, or "
                         "raise max_image_pixels if it is genuine")
    try:
        with Image.open(src) as im:  # reads the header only; pixels are decoded on first use
            if im.width * im.height > limit:
                raise too_big(im.width, im.height)
            mode = {1: "L", 3: "RGB"}.get(channels or 0, "RGB" if im.mode not in ("L", "1") else "L")
            im = im.convert(mode)
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.DecompressionBombError:  # past Pillow's own hard limit, before our check ran
        raise DataError(f"{path} declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, far more "
                        f"than the limit of {limit:,} pixels (max_image_pixels); shrink the "
                        "image") from None
    except (UnidentifiedImageError, OSError) as e:
        # a known image suffix means the file is damaged (a corrupt PNG is still a PNG: advising
        # PNG would send the user in circles); an unknown one means a format Pillow cannot read
        known = isinstance(path, Path) and path.suffix.lower() in IMAGE_SUFFIXES
        why = ("the file is damaged or truncated; replace it or remove it" if known else
               f"its format is not one this loader reads ({', '.join(sorted(IMAGE_SUFFIXES))})")
        raise UnreadableImage(f"{path} is not a readable image ({e.__class__.__name__}): "
                              f"{why}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class UnreadableImage(DataError):
    """An image file that exists but cannot be decoded (damaged, truncated, unknown format)."""


SKIPPED_SHOWN = 5  # names listed when unreadable images are skipped


def load_image_folder(root: str | Path, channels: int | None = None,
                      size: tuple[int, int] | None = None, max_pixels: int = 0,
                      skip_bad_files: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`root/<class>/<image>` -> (uint8 images (N, C, H, W), labels (N,), class names).

    All images are converted to the channel count and size of the first one unless
    `channels` / `size` are given. `max_pixels` caps each image as in load_image. An
    unreadable image is an error, or with `skip_bad_files` is left out, and the count and
    the first few names are printed."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class subfolders; expected {root}/<class name>/<image>.png")
    images, labels, skipped = [], [], []
    for ci, cname in enumerate(classes):
        files = sorted(p for p in (root / cname).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name.lower() not in _IGNORED)
        for f in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{f} is not an image file (expected one of "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))}); move it out of the "
                                "image folder")
            try:
                img = load_image(f, channels, size, max_pixels)
            except UnreadableImage as e:
                if not skip_bad_files:
                    raise UnreadableImage(f"{e}, or pass --set skip_bad_files=true to leave "
                                          "unreadable images out") from None
                skipped.append(f)
                continue
            if channels is None:
                channels = img.shape[0]
            if size is None:
                size = (img.shape[1], img.shape[2])
            images.append(img)
            labels.append(ci)
    if skipped:
        names = ", ".join(str(f.relative_to(root)) for f in skipped[:SKIPPED_SHOWN])
        more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
        print(f"note: skipped {len(skipped)} unreadable image(s) in {root} (skip_bad_files): "
              f"{names}{more}", file=sys.stderr)
    if not images:
        raise DataError(f"{root}: the class folders hold no images")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


NAMED = ("fashion-mnist", "mnist", "digits", "cifar10")  # labelled image datasets by name


@dataclass
class ImageSplits:
    """Labelled images split three ways: {split: (uint8 images (N, C, H, W), int64 labels (N,))}."""
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    train_missing: bool  # a named dataset was found with its test split only (e.g. offline MNIST)


def load_image_splits(data: str, data_dir: str = "", val_fraction: float = 0.1,
                      test_fraction: float = 0.2, train_limit: int = 0, image_size: int = 0,
                      channels: int = 0, max_image_pixels: int = 0,
                      skip_bad_files: bool = False) -> ImageSplits:
    """A named dataset (fashion-mnist, mnist, digits, cifar10) or a folder `data/<class>/<image>`
    -> train/val/test splits, the same for every recipe that reads images.

    One policy, every carve with the fixed SPLIT_SEED (independent of the training seed):
      - a source with official train and test splits keeps them;
      - a source without a separate test split (digits, a folder) or found with its test split
        only (offline MNIST copies) is carved: `test_fraction` of it is the test split, the
        rest is training data; the run says so once;
      - `train_limit` keeps the first N training images, then `val_fraction` of those is
        carved out for validation.
    `image_size` (folders) resizes to a square side; `channels` converts a folder's images
    (1 grey, 3 RGB) and must match a named dataset's images; `max_image_pixels` caps a
    folder's images before decoding (0 = the default, see max_image_pixels);
    `skip_bad_files` leaves a folder's unreadable images out instead of failing."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name}={value} must be at least 0 and below 1 (a fraction of the images)")
    if train_limit < 0:
        raise DataError(f"train_limit={train_limit} must be 0 (all images) or a positive count")
    is_folder = data not in NAMED
    # the search roots are part of the cache key: a changed GENFORGE_DATA or data_dir reloads
    roots = tuple(str(p) for p in registry.search_roots(data_dir or None))
    train, test, classes, train_missing = _load_source(
        data, data_dir, roots, test_fraction,
        image_size if is_folder else 0, channels if is_folder else 0, max_image_pixels,
        skip_bad_files)
    if channels and train[0].shape[1] != channels:
        raise DataError(f"data={data!r} has {train[0].shape[1]}-channel images but {channels}-channel "
                        f"images are needed here; choose a dataset of {channels}-channel images")
    x, y = train
    if train_limit:
        x, y = x[:train_limit], y[:train_limit]
    rest, val = carve(len(x), val_fraction)
    splits = {"train": (x[rest], y[rest]), "val": (x[val], y[val]), "test": test}
    for split in ("test", "train", "val"):  # in the order they are carved
        if len(splits[split][0]) == 0 and not (split == "val" and val_fraction == 0):
            raise DataError(
                f"data={data!r}: the {split} split is empty ({len(train[0]) + len(test[0])} images, "
                f"train_limit={train_limit}, val_fraction={val_fraction}, test_fraction="
                f"{test_fraction}); add images or raise the fraction of that split")
    return ImageSplits(splits, list(classes), train_missing)


def _carve_test(x: torch.Tensor, y: torch.Tensor, test_fraction: float):
    rest, test = carve(len(x), test_fraction)
    return (x[rest], y[rest]), (x[test], y[test])


@functools.lru_cache(maxsize=4)
def _load_source(data: str, data_dir: str, roots: tuple[str, ...], test_fraction: float,
                 image_size: int, channels: int, max_pixels: int = 0,
                 skip_bad_files: bool = False):
    """-> (train (x, y), test (x, y), class names, train_missing), before validation carving."""
    if data in ("fashion-mnist", "mnist"):
        return _load_idx(data, data_dir, test_fraction)
    if data == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        # sklearn stores 0..16 intensities; scale to 0..255 like every other source
        x = torch.from_numpy((d.images * (255.0 / 16.0)).round()).to(torch.uint8)[:, None]
        train, test = _carve_test(x, torch.from_numpy(d.target).long(), test_fraction)
        return train, test, registry.get("digits").classes, False
    if data == "cifar10":
        from genforge.data.cifar import CLASSES, load_cifar10

        archive = registry.find("cifar10", "cifar-10-python.tar.gz", data_dir or None)
        return load_cifar10(archive, "train"), load_cifar10(archive, "test"), CLASSES, False
    path = Path(data)
    if path.is_dir():
        size = (image_size, image_size) if image_size else None
        x, y, classes = load_image_folder(path, channels or None, size, max_pixels, skip_bad_files)
        train, test = _carve_test(x, y, test_fraction)
        return train, test, classes, False
    raise DataError(
        f"data={data!r} is neither a named image dataset ({', '.join(NAMED)}) nor a folder "
        "of class subfolders with images (path/to/folder/<class name>/<image>.png)")


def _load_idx(data: str, data_dir: str, test_fraction: float):
    """MNIST-format datasets: the official 60k/10k splits, or the test split carved when only
    it is found (offline copies of MNIST hold just t10k-*)."""
    ds = registry.get(data)

    def find(split):
        return [registry.find(data, f, data_dir or None) for f in ds.splits[split]]

    def read(split, paths):
        from genforge.data.idx import read_idx

        x, y = read_idx(paths[0]), read_idx(paths[1]).long()
        if x.ndim != 3 or len(x) != len(y):
            raise DataError(f"{data} {split}: images {tuple(x.shape)} and labels {tuple(y.shape)} "
                            "do not match; delete the files and fetch them again")
        return x[:, None], y  # (N, 1, H, W)

    # only an absent (or undownloadable) training split falls back to the test split; a
    # corrupt file stays an error
    try:
        train_paths = find("train")
    except DataError as e:
        missing_train = e
    else:
        return read("train", train_paths), read("test", find("test")), ds.classes, False
    try:
        test_paths = find("test")
    except DataError:
        raise DataError(f"{data}: neither its training nor its test split was found.\n"
                        f"{missing_train}") from None
    x, y = read("test", test_paths)
    train, test = _carve_test(x, y, test_fraction)
    print(f"note: {data}: no training split found, only its {len(x):,}-image test split; "
          f"carving it with the fixed seed into {len(train[0]):,} training images (validation "
          f"is carved from those) and {len(test[0]):,} test images (test_fraction="
          f"{test_fraction}). To use the official split, put {' and '.join(ds.splits['train'])} "
          f"into <GENFORGE_DATA or --data-dir>/{data}/.", file=sys.stderr)
    return train, test, ds.classes, True


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
