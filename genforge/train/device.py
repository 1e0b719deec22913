"""Device and dtype, resolved once."""
from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA GPU is available; "
                           "use --set device=cpu (or auto)")
    device = torch.device(name)
    if device.type == "cuda":
        # TF32 tensor cores for the fp32 matmuls and convolutions autocast leaves in fp32
        # (Ampere and later; 10-bit mantissa, what PyTorch calls "high" precision)
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def keep_freed_memory() -> bool:
    """Keep freed host memory in the process for the next step's tensors.

    glibc gives every freed block above its mmap threshold (128 KB, rising to at most 32 MB)
    back to the OS, so each training step's large temporaries (activations, their gradients)
    arrive as fresh pages, zeroed and mapped one 4 KB fault at a time: 4,700-7,300 faults a step
    for cnn-fashion's CNN at batch 128, a fifth of its step time on a 2-core CPU. With blocks
    up to 512 MB served from the heap and up to 1 GB of free heap kept, the steps after the
    first reuse the same memory (0 faults a step). The cost: the process holds on to its peak
    working set until it exits, as PyTorch's GPU caching allocator does. glibc only (Linux);
    elsewhere nothing changes. Returns whether the setting took."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 512 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def autocast_dtype(device: torch.device, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype: bf16 on a CUDA GPU that supports it (Ampere and later), else None
    (fp32). Not fp16: it needs loss scaling, and GPUs without bf16 are rare now. Not on CPU:
    CPUs without AMX run bf16 matmuls far slower than fp32."""
    if device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else None


def autocast(device: torch.device):
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def to_device(batch: Any, device: torch.device) -> Any:
    """Host batches go to a GPU from pinned (page-locked) memory, so the copy is a true
    asynchronous DMA (`non_blocking`) that overlaps the GPU's work on the previous step."""
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda" and batch.device.type == "cpu":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
