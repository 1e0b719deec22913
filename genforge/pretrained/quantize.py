"""int8 weights for faster CPU inference of a loaded model (decoding, embedding).

Decoding one token at batch 1 multiplies every weight once, so it is bound by memory
bandwidth: SmolLM2-135M in fp32 streams ~540 MB per token. Storing the Linear layers' weights
as int8 (per output channel, symmetric: w ~= scale[row] * q, q in [-127, 127]; the scheme of
LLM.int8()'s vector-wise quantization without its outlier split, Dettmers et al. 2022) cuts
that stream by 4x.

Kernels (`kernel=`), measured on a 2-core AMD Zen 3 CPU with torch 2.13 (bench/README.md):
- `fbgemm` (`auto` on x86 CPUs when calibration input is given): fbgemm's dynamic int8 GEMM,
  which also quantizes the activations to uint8 on the fly (int32 accumulation, fp32 out);
  ~10x faster than the fp32 GEMV per layer at batch 1. Two things make it accurate:
  * SmoothQuant (Xiao et al. 2023): a per-input-channel factor s_j = amax(x_j)^a /
    amax(W_j)^(1-a) (a = 0.5) moves the activation outliers of LLMs into the weights
    (x / s) @ (W s)^T = x @ W^T, so one activation range no longer has to span them. The
    activation maxima come from one forward over calibration text (`calibrate`).
  * one activation range per token (row), not per tensor: with several rows, each is mapped
    onto [-1, 1] (x = c + r x') before the kernel and W x = r (W x') + c (W 1) after, so a
    token's result does not depend on the other tokens of the batch. One row (the decode step)
    goes to the kernel as it is: its range is its own. `token_range="sym"` maps each row by
    its largest magnitude alone (x = r x', c = 0): two elementwise passes fewer over the
    layer's input and output, at half the resolution for a one-sided row (a GELU output).
    The text encoders use it (`QUANT_TOKEN_RANGE` of their recipe): for all-MiniLM-L6-v2 at
    batch 64 it was 1.2x faster end to end than "asym", at cosine 0.9987 (mean) to the fp32
    vectors instead of 0.9993 (bench/README.md); the LLMs keep "asym".
  Without them the token loss on Tiny Shakespeare rose by 13%; with both, calibrated on
  genforge's generic text, SmolLM2's perplexity on 8,192 held-out tokens is +1.8% token by
  token (decoding) and +1.5% over 512-token windows, at 2.75x transformers' fp32 decode speed
  (bench/README.md; calibrated on Shakespeare itself: -0.1% on 1,024 tokens). torch marks its
  quantized-tensor API deprecated.
- `int8pack`: `torch._weight_int8pack_mm` (weight-only int8, fp32 activations). Without
  AVX-512 it is ~10x *slower* than the fp32 GEMV here, so `auto` never picks it.
- `dequant` (`auto` without calibration or off x86): weight-only, dequantize per layer on the
  fly (F.linear on q.float(), then the scale): fp32 activations, any device, token loss within
  ~0.2% of fp32, but ~2x slower per layer than fp32 on this CPU (the int8 -> fp32 copy costs
  more than the bandwidth it saves). It buys resident memory, not speed.

Only inference: a quantized model is not trained or saved (its state dict differs). The token
embedding stays fp32; a head tied to it gets its own int8 copy, so the lookup table is exact
and only the output projection is quantized.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.config import ConfigError

KERNELS = ("auto", "fbgemm", "int8pack", "dequant")
TOKEN_RANGES = ("asym", "sym")
MODES = ("int8",)


class QuantizeError(ConfigError):
    """A quantization setting that cannot apply to this model or machine."""


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_weight(w: torch.Tensor, smooth: torch.Tensor | None = None,
                    rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (q int8 (out, in), scale float32 (out,)), symmetric per row;
    `smooth` (in,): quantize w * smooth instead. Done `rows` rows at a time, so the float
    temporaries of a large matrix (a 49k-token head: 113 MB each) never exist whole."""
    w = w.detach()
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.size(0), dtype=torch.float32, device=w.device)
    for i in range(0, w.size(0), rows):
        c = w[i:i + rows].float()
        if smooth is not None:
            c = c * smooth[None, :]
        sc = (c.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # an all-zero row: any scale works
        q[i:i + rows] = torch.round(c / sc[:, None]).clamp(-127, 127)
        scale[i:i + rows] = sc
    return q, scale


# torch.compile cannot trace fbgemm's packed-weight object (a TorchScript class), so the
# compiled decode step reaches it through this custom op: tensors and an integer handle in,
# a tensor out. The handle indexes a table of the packed weights of live Int8Linear layers.
_PACKED: dict[int, object] = {}
_HANDLES = itertools.count()


@torch.library.custom_op("genforge::int8_linear_fbgemm", mutates_args=())
def _fbgemm_linear(x: torch.Tensor, handle: int, out_features: int, reduce_range: bool) -> torch.Tensor:
    # reduce_range=False (what Int8Linear passes): full 8-bit activations. The 7-bit range
    # avoids the AVX2 kernel's int16 saturation but cost SmolLM2 +3.9% perplexity against +1.4%
    return torch.ops.quantized.linear_dynamic(x.contiguous(), _PACKED[handle], reduce_range)


def _int8_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """fbgemm's kernel directly in eager mode (a custom op's Python dispatch cost ~40 us a call,
    ~8 ms of a SmolLM2 token); through the custom op when torch.compile traces."""
    if torch.compiler.is_compiling():
        return _fbgemm_linear(x, handle, out_features, False)
    return torch.ops.quantized.linear_dynamic(x.contiguous(), _PACKED[handle], False)


@_fbgemm_linear.register_fake
def _(x: torch.Tensor, handle: int, out_features: int, reduce_range: bool) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


class Int8Linear(nn.Module):
    """A Linear layer whose weight is int8 per output channel (see the module docstring).
    `smooth` (in_features,): SmoothQuant factors, folded into the weight (fbgemm only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 smooth: torch.Tensor | None = None, token_range: str = "asym"):
        super().__init__()
        check_token_range(token_range)
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel
        self.token_range = token_range  # fbgemm with several rows: see the module docstring
        weight = weight.detach()
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.handle = None
        inv = None if smooth is None else (1.0 / smooth).float()
        self.register_buffer("inv_smooth", inv if kernel == "fbgemm" else None)
        if kernel == "fbgemm":
            q, scale = quantize_weight(weight, smooth)
            zero = torch.zeros(self.out_features, dtype=torch.long)
            # int8 values and scales straight into a quantized tensor (no float copy)
            with warnings.catch_warnings():  # torch's deprecation notice of qint8 tensors
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
            self.register_buffer("wsum", (q.sum(dim=1, dtype=torch.int32).float() * scale))
            self.handle = next(_HANDLES)
            # the bias is added after the per-token rescaling, so it is not packed
            _PACKED[self.handle] = torch.ops.quantized.linear_prepack(qw, None)
        else:
            q, scale = quantize_weight(weight)
            self.register_buffer("qweight", q)
            self.register_buffer("scale", scale)

    def __del__(self):
        if self.handle is not None:
            _PACKED.pop(self.handle, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "fbgemm":
            if self.inv_smooth is not None:
                x = x * self.inv_smooth
            rows = x.reshape(-1, self.in_features)
            if rows.size(0) == 1:  # the decode step: one token, the kernel's range is its own
                y = _int8_linear(rows, self.handle, self.out_features)
            elif self.token_range == "sym":
                # each row scaled by its largest magnitude (x = r x'); a smoothed copy is ours
                # to divide in place, and r and the bias go back on in one pass
                r = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True).clamp_(min=1e-12)
                scaled = rows.div_(r) if self.inv_smooth is not None else rows / r
                y = _int8_linear(scaled, self.handle, self.out_features)
                if self.bias is not None:
                    return torch.addcmul(self.bias, y, r).reshape(*x.shape[:-1], self.out_features)
                y = y * r
            else:
                # one activation range per token: each row mapped onto [-1, 1] (x = c + r x'),
                # so the kernel's one range per tensor is every row's own; then
                # W x = r (W x') + c (W 1)
                hi, lo = rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True)
                c, r = (hi + lo) / 2, ((hi - lo) / 2).clamp(min=1e-12)
                y = _int8_linear((rows - c) / r, self.handle, self.out_features) * r + c * self.wsum
            y = y.reshape(*x.shape[:-1], self.out_features)
        elif self.kernel == "int8pack":
            y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.qweight,
                                          self.scale.to(x.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}, "
                f"smoothed={self.inv_smooth is not None}")


# SmoothQuant's migration strength: 0.5 splits the range evenly between activations and
# weights (the paper's default; 0.8 and 0.3 were worse on SmolLM2, bench/README.md)
SMOOTH_ALPHA = 0.5


@torch.no_grad()
def calibrate(model: nn.Module, run: Callable[[nn.Module], object]) -> dict[str, torch.Tensor]:
    """Largest |activation| per input channel of every plain nn.Linear of `model`, over
    whatever forwards `run(model)` does (e.g. one pass over some text). {module name: amax}."""
    amax: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach()
            a = x.abs().reshape(-1, x.size(-1)).amax(dim=0).float()
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)
        return record

    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        run(model)
    finally:
        for h in hooks:
            h.remove()
    return amax


def smoothing_factors(weight: torch.Tensor, amax: torch.Tensor, alpha: float = SMOOTH_ALPHA) -> torch.Tensor:
    """SmoothQuant's s_j = amax(x_j)^alpha / amax(|W[:, j]|)^(1 - alpha), per input channel j
    (channels never seen active keep s = 1)."""
    w = weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
    s = amax.clamp(min=1e-5).pow(alpha) / w.pow(1 - alpha)
    return torch.where(amax > 0, s, torch.ones_like(s)).clamp(min=1e-5)


def check_token_range(token_range: str) -> None:
    if token_range not in TOKEN_RANGES:
        raise QuantizeError(f"unknown token_range {token_range!r}; choose one of {', '.join(TOKEN_RANGES)}")


def check_mode(mode: str) -> None:
    """One error for a quantization genforge does not have (checked before any loading)."""
    if mode not in MODES:
        raise QuantizeError(f"unknown quantization {mode!r}; supported: {', '.join(MODES)}")


def resolve_kernel(kernel: str, device: torch.device, calibrated: bool = False) -> str:
    if kernel not in KERNELS:
        raise QuantizeError(f"unknown int8 kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    if kernel == "auto":
        return "fbgemm" if calibrated and device.type == "cpu" and fbgemm_available() else "dequant"
    if kernel == "fbgemm" and (device.type != "cpu" or not fbgemm_available()):
        raise QuantizeError("the fbgemm int8 kernel needs an x86 CPU build of torch with fbgemm "
                            f"(model on {device}); use kernel=dequant")
    return kernel


def quantize_model(model: nn.Module, mode: str = "int8", kernel: str = "auto",
                   head: bool = True, calibration: Callable[[nn.Module], object] | None = None,
                   token_range: str = "asym") -> dict:
    """Replace every plain nn.Linear of `model` (in place) with an Int8Linear; returns a
    summary {kernel, layers, skipped, smoothed, bytes_before, bytes_after}. `head=False`
    keeps the output projection (`model.head`) in float. `calibration(model)`: forwards over
    representative input, from which the fbgemm kernel's SmoothQuant factors are computed
    (`auto` picks fbgemm only with it). LoRA layers (adapters not merged) are skipped: merge
    the run first (`genforge merge`)."""
    check_mode(mode)
    check_token_range(token_range)
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is None:
        raise QuantizeError("the model has no floating-point weights to quantize")
    kernel = resolve_kernel(kernel, p.device, calibrated=calibration is not None)
    amax = calibrate(model, calibration) if kernel == "fbgemm" and calibration is not None else {}
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    layers = skipped = smoothed = before = after = 0
    # by name, holding no module: each float weight is freed as soon as its layer is replaced,
    # so the peak is the float model plus one layer, not plus the whole int8 copy
    targets = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for full in targets:
        parent_name, _, child_name = full.rpartition(".")
        module = model.get_submodule(parent_name)
        child = getattr(module, child_name)
        if type(child) is not nn.Linear or (full == "head" and not head):
            skipped += 1
            continue
        smooth = smoothing_factors(child.weight, amax[full]) if full in amax else None
        smoothed += smooth is not None
        q = Int8Linear(child.weight, child.bias, kernel, smooth, token_range).to(child.weight.device)
        n, out_features = child.weight.numel(), child.out_features
        # a weight shared with an embedding stays in memory for the lookup: the int8
        # copy adds to the footprint instead of replacing it
        before += 0 if id(child.weight) in tied else 4 * n
        after += n + 4 * out_features
        del child
        setattr(module, child_name, q)
        layers += 1
    return {"kernel": kernel, "layers": layers, "skipped": skipped, "smoothed": smoothed,
            "bytes_before": before, "bytes_after": after}


__all__ = ["Int8Linear", "KERNELS", "MODES", "QuantizeError", "SMOOTH_ALPHA", "TOKEN_RANGES", "calibrate", "check_mode", "check_token_range", "quantize_model",
           "quantize_weight", "smoothing_factors"]
