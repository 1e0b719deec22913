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
