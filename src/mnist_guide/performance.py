"""Measure and shrink a model: honest timings, thread counts, profiler tables, size, int8 Linear layers.

Nothing here decides what is fast: it measures, and the notebook compares ratios measured in
the same run.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def synchronize(device: torch.device | str | None) -> None:
    """Wait until every kernel queued on `device` has finished: accelerators run asynchronously.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(
    fn: Callable[[], object], *, repeats: int = 10, warmup: int = 2, device: torch.device | str | None = None
) -> float:
    """Run `fn` `warmup` times untimed (one-off costs), then `repeats` times timed; return the median seconds.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def compare_seconds(
    candidates: Mapping[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
    device: torch.device | str | None = None
) -> dict[str, float]:
    """Time several functions in turns (a, b, a, b, ...), so a slow spell hits each alike; the median seconds of each.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    synchronize(device)
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            started = time.perf_counter()
            fn()
            synchronize(device)
            runs[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in runs.items()}


@contextmanager
def num_threads(count: int) -> Iterator[int]:
    """Run the body with `torch.set_num_threads(count)`, restoring the process-wide count afterwards.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# The profiler's table


@dataclass(frozen=True)
class OperatorStat:
    """One row of a profile: an operator, how often it ran, its own time and its share of the total."""

    name: str
    calls: int
    self_seconds: float
    share: float


def top_operators(profile, n: int = 10, *, device_time: bool = False) -> list[OperatorStat]:
    """The `n` operators of a finished `torch.profiler.profile` with the most self time (on the device if `device_time`).

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    events = profile.key_averages()
    attribute = "self_device_time_total" if device_time else "self_cpu_time_total"
    times = [(event.key, event.count, getattr(event, attribute, 0.0) / 1e6) for event in events]
    total = sum(seconds for _, _, seconds in times) or 1.0
    times.sort(key=lambda row: row[2], reverse=True)
    return [OperatorStat(name, calls, seconds, seconds / total) for name, calls, seconds in times[:n]]


def format_operator_table(stats: list[OperatorStat]) -> str:
    """Render `top_operators(...)` as a text table: operator, calls, self milliseconds, share.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    width = max([len("operator"), *(len(stat.name) for stat in stats)])
    lines = [f"{'operator':<{width}}  {'calls':>6}  {'self ms':>9}  {'share':>6}"]
    lines += [
        f"{stat.name:<{width}}  {stat.calls:>6}  {stat.self_seconds * 1e3:>9.2f}  {stat.share:>6.1%}" for stat in stats
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Size


def model_size_bytes(model: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """Bytes taken by the tensors of a model's `state_dict` (parameters and buffers), shared ones once.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    unique = {(t.data_ptr(), t.dtype, tuple(t.shape)): t for t in state.values() if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in unique.values())


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save` of the model's weights on the CPU: the size of a weights-only file.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


# --------------------------------------------------------------------------------------------
# int8 weight-only quantisation of Linear layers


def quantize_per_row_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D weight to int8 with one scale per output row: `weight ≈ q * scale`, `scale = max|row| / 127`.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    weight = weight.detach().to(torch.float32)
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    quantized = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
    return quantized, scale


class Int8Linear(nn.Module):
    """A Linear layer storing its weight as int8 with a float scale per row: a quarter of the bytes, no faster.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, 1))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantise a trained `nn.Linear` (its bias stays float)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        quantized, scale = quantize_per_row_int8(linear.weight)
        device = linear.weight.device
        layer.weight_int8 = quantized.to(device)
        layer.scale = scale.to(device)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer computes with: `weight_int8 * scale`."""
        return self.weight_int8.to(dtype) * self.scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, weight=int8"


def quantize_linear_layers(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every `nn.Linear` replaced by an `Int8Linear`.

    Taught in notebooks/10_pytorch2_performance.ipynb.
    """
    quantized = copy.deepcopy(model).eval()
    if isinstance(quantized, nn.Linear):
        return Int8Linear.from_linear(quantized).eval()
    for parent in list(quantized.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    return quantized
