"""CIFAR-10 in its python-pickle batch format (https://www.cs.toronto.edu/~kriz/cifar.html).

The batches are Python pickles of plain dicts of numpy arrays and lists. Unpickling an
arbitrary file can execute code, so a restricted unpickler admits only numpy array
reconstruction and builtins containers."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from genforge.data.registry import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def parse_batch(raw: bytes, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on garbage
        raise DataError(f"{source}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{source}: not a CIFAR-10 python batch (expected a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{source}: CIFAR-10 batch lacks 'data' or 'labels' (has {sorted(d)})")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{source}: CIFAR-10 batch has data of shape {data.shape} and "
                        f"{len(labels)} labels; expected (N, 3072) and N labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(archive: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    try:
        with tarfile.open(archive) as tf:
            for n in names:
                member = tf.extractfile(f"cifar-10-batches-py/{n}")
                if member is None:
                    raise KeyError(n)
                x, y = parse_batch(member.read(), f"{archive}:{n}")
                xs.append(x)
                ys.append(y)
    except (tarfile.TarError, KeyError) as e:
        raise DataError(f"{archive}: not a CIFAR-10 python archive ({e}); delete it and "
                        "fetch it again") from None
    return torch.cat(xs), torch.cat(ys)
