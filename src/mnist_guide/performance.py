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
    """Wait until every kernel queued on `device` has finished (a no-op on the CPU).

    Accelerators run asynchronously: without this a timer measures how fast work is queued,
    not how fast it runs.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(
    fn: Callable[[], object], *, repeats: int = 10, warmup: int = 2, device: torch.device | str | None = None
) -> float:
    """Run `fn` `warmup` times untimed, then `repeats` times timed; return the median seconds per run.

    The warm-up absorbs one-off costs (memory allocation, kernel selection, compilation) and the
    median ignores the odd run slowed by another program. Pass `device` for an accelerator, so
    each timed run waits for its kernels.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup cannot be negative, got {warmup}")
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
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
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Time several functions in turns (a, b, a, b, ...) and return the median seconds of each.

    Taking turns spreads a slow spell of the machine over every candidate, so the ratios between
    them are fairer than those of one block of runs after another.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    if not candidates:
        raise ValueError("give at least one function to time")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup cannot be negative, got {warmup}")
    for name, fn in candidates.items():
        if not callable(fn):
            raise TypeError(f"{name!r}: expected a callable taking no arguments, got {type(fn).__name__}")
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
    """Run the body with `torch.set_num_threads(count)`, restoring the previous count afterwards.

    The thread count is process-wide: a cell that changes it and forgets to restore it slows or
    speeds up everything run after it.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
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
    """One row of a profile: an operator, how often it ran, its own time and its share of the total.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """

    name: str
    calls: int
    self_seconds: float
    share: float


def top_operators(profile, n: int = 10, *, device_time: bool = False) -> list[OperatorStat]:
    """Return the `n` operators of a `torch.profiler.profile` with the most self time, largest first.

    Self time excludes the operators an operator calls, so the shares add up to at most 1.
    `device_time=True` ranks by time on the accelerator instead of the CPU.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    try:
        events = profile.key_averages()
    except (AttributeError, AssertionError, RuntimeError) as error:
        raise ValueError(
            "profile holds no results: pass a torch.profiler.profile after its `with` block has ended"
        ) from error
    attribute = "self_device_time_total" if device_time else "self_cpu_time_total"
    times = [(event.key, event.count, getattr(event, attribute, 0.0) / 1e6) for event in events]
    total = sum(seconds for _, _, seconds in times)
    if total <= 0:
        raise ValueError(f"the profile recorded no {'device' if device_time else 'CPU'} time")
    times.sort(key=lambda row: row[2], reverse=True)
    return [OperatorStat(name, calls, seconds, seconds / total) for name, calls, seconds in times[:n]]


def format_operator_table(stats: list[OperatorStat]) -> str:
    """Render `top_operators(...)` as a text table: operator, calls, self milliseconds, share.

    Taught in notebooks/09_pytorch2_performance.ipynb.
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

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(state, Mapping):
        raise TypeError(f"expected an nn.Module or a state_dict, got {type(model).__name__}")
    seen, total = set(), 0
    for tensor in state.values():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save` of the model's weights, moved to the CPU: the size of a weights-only file.

    Saved from the CPU (as checkpoints are), so the figure is the same whichever device holds the model.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


# --------------------------------------------------------------------------------------------
# int8 weight-only quantisation of Linear layers


def quantize_per_row_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D weight to int8, one scale per output row: `weight ≈ q * scale`.

    Symmetric: `scale = max|row| / 127`, `q = round(weight / scale)` in [-127, 127]. Rounding
    moves each weight by at most half a step, `scale / 2`.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight [out_features, in_features], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"expected a floating-point weight, got {weight.dtype}")
    weight = weight.detach().to(torch.float32)
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds inf or nan: quantise a trained, finite weight")
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    quantized = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
    return quantized, scale


class Int8Linear(nn.Module):
    """A Linear layer whose weight is stored as int8 with one float scale per output row.

    Weight-only quantisation: the weight takes a quarter of the bytes; `forward` turns it back
    into the input's dtype and calls `F.linear`, so results match the float layer to within the
    rounding, on any device, but it is no faster (fast int8 kernels are a separate matter).

    Taught in notebooks/09_pytorch2_performance.ipynb.
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
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
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
    """Return a copy of `model` in eval mode with every `nn.Linear` replaced by an `Int8Linear`.

    The original model is left untouched; convolutions and BatchNorm stay float.

    Taught in notebooks/09_pytorch2_performance.ipynb.
    """
    if not any(isinstance(module, nn.Linear) for module in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: nothing to quantise")
    quantized = copy.deepcopy(model).eval()
    if isinstance(quantized, nn.Linear):
        return Int8Linear.from_linear(quantized).eval()
    for parent in list(quantized.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    return quantized
