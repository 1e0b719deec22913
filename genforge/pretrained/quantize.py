"""int8 weights for faster CPU decoding of a loaded model.

Decoding one token at batch 1 multiplies every weight once, so it is bound by memory
bandwidth: SmolLM2-135M in fp32 streams ~540 MB per token. Storing the Linear layers' weights
as int8 (per output channel, symmetric: w ~= scale[row] * q, q in [-127, 127]; the scheme of
LLM.int8()'s vector-wise quantization without its outlier split, Dettmers et al. 2022) cuts
that stream by 4x.

Kernels (`kernel=`), measured on a 2-core AMD Zen 3 CPU with torch 2.13 (bench/README.md):
- `fbgemm` (opt-in, x86 CPUs): fbgemm's dynamic int8 GEMM, which also quantizes each
  activation tensor to uint8 on the fly (int32 accumulation, fp32 out). ~10x faster than the
  fp32 GEMV per layer at batch 1 in isolation, but one scale per activation tensor cannot
  hold SmolLM2's outlier features (the problem LLM.int8() splits them out for): token loss on
  Tiny Shakespeare +13% (4.08 -> 4.61 nats), so `auto` never picks it. torch marks its
  quantized-tensor API deprecated.
- `int8pack`: `torch._weight_int8pack_mm` (weight-only int8, fp32 activations). Without
  AVX-512 it is ~10x *slower* than the fp32 GEMV here, so `auto` never picks it.
- `dequant` (`auto`): weight-only, dequantize per layer on the fly (F.linear on q.float(),
  then the scale): fp32 activations, any device, token loss within ~0.2% of fp32, but ~2x
  slower per layer than fp32 on this CPU (the int8 -> fp32 copy costs more than the
  bandwidth it saves). It buys resident memory, not speed, with torch 2.13's CPU kernels.

Only inference: a quantized model is not trained or saved (its state dict differs). The token
embedding stays fp32; a head tied to it gets its own int8 copy, so the lookup table is exact
and only the output projection is quantized.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.config import ConfigError

KERNELS = ("auto", "fbgemm", "int8pack", "dequant")
MODES = ("int8",)


class QuantizeError(ConfigError):
    """A quantization setting that cannot apply to this model or machine."""


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (q int8 (out, in), scale float32 (out,)), symmetric per row."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # an all-zero row: any scale works
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


# torch.compile cannot trace fbgemm's packed-weight object (a TorchScript class), so the
# compiled decode step reaches it through this custom op: tensors and an integer handle in,
# a tensor out. The handle indexes a table of the packed weights of live Int8Linear layers.
_PACKED: dict[int, object] = {}
_HANDLES = itertools.count()


@torch.library.custom_op("genforge::int8_linear_fbgemm", mutates_args=())
def _fbgemm_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    # reduce_range=False: full 8-bit activations. Measured lower error than the 7-bit range on
    # SmolLM2 (the perplexity difference is in bench/README.md)
    return torch.ops.quantized.linear_dynamic(x.contiguous(), _PACKED[handle], False)


@_fbgemm_linear.register_fake
def _(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


class Int8Linear(nn.Module):
    """A Linear layer whose weight is int8 per output channel (see the module docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel
        q, scale = quantize_weight(weight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.handle = None
        if kernel == "fbgemm":
            zero = torch.zeros(self.out_features, dtype=torch.long)
            qw = torch.quantize_per_channel(q.float() * scale[:, None], scale.double(), zero, 0,
                                            torch.qint8)
            self.handle = next(_HANDLES)
            _PACKED[self.handle] = torch.ops.quantized.linear_prepack(qw, self.bias)
        else:
            self.register_buffer("qweight", q)
            self.register_buffer("scale", scale)

    def __del__(self):
        if self.handle is not None:
            _PACKED.pop(self.handle, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "fbgemm":
            return _fbgemm_linear(x, self.handle, self.out_features)
        if self.kernel == "int8pack":
            y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.qweight,
                                          self.scale.to(x.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    if kernel not in KERNELS:
        raise QuantizeError(f"unknown int8 kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    if kernel == "auto":
        return "dequant"
    if kernel == "fbgemm" and (device.type != "cpu" or not fbgemm_available()):
        raise QuantizeError("the fbgemm int8 kernel needs an x86 CPU build of torch with fbgemm "
                            f"(model on {device}); use kernel=dequant")
    return kernel


def quantize_model(model: nn.Module, mode: str = "int8", kernel: str = "auto",
                   head: bool = True) -> dict:
    """Replace every plain nn.Linear of `model` (in place) with an Int8Linear; returns a
    summary {kernel, layers, skipped, bytes_before, bytes_after}. `head=False` keeps the
    output projection (`model.head`) in float. LoRA layers (adapters not merged) are skipped:
    merge the run first (`genforge merge`)."""
    if mode not in MODES:
        raise QuantizeError(f"unknown quantization {mode!r}; supported: {', '.join(MODES)}")
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is None:
        raise QuantizeError("the model has no floating-point weights to quantize")
    kernel = resolve_kernel(kernel, p.device)
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    layers = skipped = before = after = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not isinstance(child, nn.Linear):
                continue
            if type(child) is not nn.Linear or (full == "head" and not head):
                skipped += 1
                continue
            q = Int8Linear(child.weight, child.bias, kernel).to(child.weight.device)
            setattr(module, child_name, q)
            layers += 1
            n = child.weight.numel()
            # a weight shared with an embedding stays in memory for the lookup: the int8
            # copy adds to the footprint instead of replacing it
            before += 0 if id(child.weight) in tied else 4 * n
            after += n + 4 * child.out_features
    return {"kernel": kernel, "layers": layers, "skipped": skipped, "bytes_before": before,
            "bytes_after": after}


__all__ = ["Int8Linear", "KERNELS", "MODES", "QuantizeError", "quantize_model", "quantize_weight"]
