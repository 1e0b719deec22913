"""The idx file format of MNIST / Fashion-MNIST (http://yann.lecun.com/exdb/mnist/)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from genforge.data.registry import DataError

# third byte of the magic number -> numpy dtype (big-endian on disk)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an idx file (optionally .gz) into a tensor of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: not a readable idx file ({e}); delete it and fetch it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: bad idx magic number; the file is corrupt or not an idx "
                        "file — delete it and fetch it again")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header; delete it and fetch it again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: idx header promises {expected} bytes of data for shape "
                        f"{shape} but the file has {len(data) - header}; the file is "
                        "truncated or corrupt — delete it and fetch it again")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")).copy())


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as idx (gzip when the name ends in .gz); used by tests/tools."""
    path = Path(path)
    arr = tensor.to(torch.uint8).numpy()
    payload = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
