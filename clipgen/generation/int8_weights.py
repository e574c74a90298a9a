"""Int8 weights for the static decoder: each linear layer's (out, in) weight rounded to int8
with one scale per output channel (symmetric, scale = max |w| / 127), so that a decode step
reads a quarter of the fp32 bytes.

Two ways to multiply, chosen by `sampling.weights`:
- `int8` (weight-only; activations stay in the sampling dtype): torch's
  `_weight_int8pack_mm` kernel where it is fast (bf16 / fp16 activations, on any device that
  has it), else the int8 weight converted to the activation dtype inside the step and the
  per-channel scale applied to the product. The fp32 form reads the int8 bytes but writes a
  full fp32 copy each step, so on a CPU it is no faster than fp32 weights, often slower
  (docs/BENCHMARKS.md).
- `int8_dynamic` (CPU): the quantized engine's dynamic linear layer (fbgemm / x86): the
  activations are rounded to 7 bits per call (one scale per call, over the rows of the batch)
  and the product runs in integer arithmetic (AVX2 / AVX512-VNNI). The fastest CPU setting
  measured; a row's output depends slightly on the other rows of its batch.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

log = logging.getLogger(__name__)

INT8_FORMATS = ("int8", "int8_dynamic")


def quantise_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) weight -> (out, in) int8 values and (out,) fp32 scales, symmetric per output
    channel: weight ~= values * scales[:, None]."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    values = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return values, scales


@cache
def int8pack_runs(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `torch._weight_int8pack_mm` has a kernel for activations of `dtype` on this
    device type (probed once on a tiny product; the answer is logged)."""
    device = torch.device(device_type)
    try:
        torch._weight_int8pack_mm(torch.ones(1, 32, device=device, dtype=dtype),
                                  torch.ones(8, 32, device=device, dtype=torch.int8),
                                  torch.ones(8, device=device, dtype=dtype))
    except (RuntimeError, NotImplementedError) as error:
        log.info("int8 weights: torch._weight_int8pack_mm has no %s kernel for %s (%s); "
                 "converting the weights in the step instead", device_type, dtype,
                 str(error).splitlines()[0])
        return False
    return True


@dataclass
class Int8Weight:
    """A linear layer's weight as int8 values and per-output-channel scales, with the kernel
    that multiplies by it. `kernel`: `int8pack`, `convert` or `dynamic`."""

    values: torch.Tensor  # (out, in) int8
    scales: torch.Tensor  # (out,) in the activation dtype (fp32 for `dynamic`)
    kernel: str
    packed: Any = None  # the quantized engine's packed weight (`dynamic`)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, in) times the weight, plus `bias`; in x's dtype."""
        if self.kernel == "dynamic":
            # reduce_range: 7-bit activations, so that fbgemm's u8 x s8 pair sums never
            # saturate on AVX2
            out = torch.ops.quantized.linear_dynamic(x.float(), self.packed, True).to(x.dtype)
        elif self.kernel == "int8pack":
            out = torch._weight_int8pack_mm(x, self.values, self.scales)
        else:
            out = torch.mm(x, self.values.to(x.dtype).t()) * self.scales
        return out if bias is None else out + bias

    @property
    def nbytes(self) -> int:
        """Bytes a product reads: the int8 values and the scales."""
        return self.values.numel() + self.scales.numel() * self.scales.element_size()


def int8_weight(weight: torch.Tensor, fmt: str, dtype: torch.dtype, device: torch.device
                ) -> Int8Weight:
    """An (out, in) weight as an `Int8Weight` in format `fmt` (`int8`: activations of
    `dtype`; `int8_dynamic`: the CPU's dynamic int8 layer)."""
    values, scales = quantise_per_channel(weight)
    if fmt == "int8_dynamic":
        if device.type != "cpu":
            raise ValueError("sampling.weights=int8_dynamic runs on the CPU only; on a GPU use "
                             "sampling.weights=int8")
        with warnings.catch_warnings():
            # quantized tensors are only the packing format here, built once per prior
            warnings.filterwarnings("ignore", message=".*quantize_per_channel.*deprecated")
            quantised = torch.quantize_per_channel(
                values.float() * scales[:, None], scales.double(),
                torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(quantised, None)
        return Int8Weight(values, scales, "dynamic", packed)
    if fmt != "int8":
        raise ValueError(f"unknown int8 format {fmt!r}; expected one of {INT8_FORMATS}")
    kernel = ("int8pack" if dtype != torch.float32 and int8pack_runs(device.type, dtype)
              else "convert")
    return Int8Weight(values.to(device), scales.to(device=device, dtype=dtype), kernel)
