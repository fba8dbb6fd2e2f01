"""Measure and shrink a model: honest timings, machine load, threads, profiler tables, size, int8 Linear layers."""

from __future__ import annotations

import copy
import io
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def synchronize(device: torch.device | str | None) -> None:
    """Wait until every kernel queued on `device` has finished: accelerators run asynchronously."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(
    fn: Callable[[], object], *, repeats: int = 10, warmup: int = 2, device: torch.device | str | None = None
) -> float:
    """Run `fn` `warmup` times untimed (one-off costs), then `repeats` times timed; return the median seconds."""
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
    """Time functions in turns (a, b, a, b, ...), so a slow spell hits each alike; the median seconds of each."""
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
    """Run the body with `torch.set_num_threads(count)`, restoring the process-wide count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class MachineLoad:
    """CPU time other programs took while it was measured, in cores (1.0 = one core kept busy), of `cores`."""

    others_cores: float
    cores: int
    method: str

    def busy(self, threads: int | None = None) -> bool:
        """Whether the others left fewer free cores than `threads` (default: torch's thread count) need."""
        wanted = min(torch.get_num_threads() if threads is None else threads, self.cores)
        return self.cores - self.others_cores < wanted - 0.25  # a quarter core of noise allowed; False for NaN


def cpu_seconds_from_proc_stat(
    text: str, cpus: Collection[int] | None = None, ticks_per_second: float = 100.0
) -> tuple[float, float]:
    """(busy, total) CPU seconds since boot of the listed `cpus` (all when None), read from `/proc/stat`'s text."""
    busy = total = 0.0
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (float(f) for f in (fields + ["0"] * 8)[:8])
        busy += user + nice + system + irq + softirq + steal  # guest time is already inside user and nice
        total += user + nice + system + irq + softirq + steal + idle + iowait
    return busy / ticks_per_second, total / ticks_per_second


def machine_load(seconds: float = 1.0, *, stat_path: str | Path = "/proc/stat") -> MachineLoad:
    """How much CPU other programs use over `seconds`: busy time from /proc/stat (Linux) less this process's own;
    elsewhere, roughly, from how far a matrix product falls short of scaling from 1 thread to all.
    """
    stat = Path(stat_path)
    if not stat.exists():
        return _load_from_thread_scaling()
    cpus = sorted(os.sched_getaffinity(0))
    ticks = os.sysconf("SC_CLK_TCK")
    busy_before, total_before = cpu_seconds_from_proc_stat(stat.read_text(), cpus, ticks)
    own_before = time.process_time()
    time.sleep(seconds)
    busy_after, total_after = cpu_seconds_from_proc_stat(stat.read_text(), cpus, ticks)
    own = time.process_time() - own_before
    elapsed = (total_after - total_before) / len(cpus)  # the seconds that passed, as the kernel counted them
    others = (busy_after - busy_before - own) / elapsed
    return MachineLoad(min(max(others, 0.0), float(len(cpus))), len(cpus), "/proc/stat")


def _load_from_thread_scaling() -> MachineLoad:
    """Cores lost to others, estimated as threads minus the speed-up of a matrix product on those threads over 1."""
    cores = os.cpu_count() or 1
    threads = min(max(torch.get_num_threads(), 2), cores)
    if threads < 2:
        return MachineLoad(math.nan, cores, "not measured: one core")
    a = torch.randn(384, 384)

    def products(count: int) -> None:
        with num_threads(count):
            for _ in range(4):
                a @ a

    seconds = compare_seconds({1: lambda: products(1), threads: lambda: products(threads)}, repeats=5)
    lost = threads - seconds[1] / seconds[threads]
    return MachineLoad(min(max(lost, 0.0), float(cores)), cores, f"matrix product, {threads} threads vs 1 (rough)")


def load_report(load: MachineLoad, threads: int | None = None) -> str:
    """One line for the top of a timing section: the load, or a WARNING that the timings cannot be trusted."""
    if math.isnan(load.others_cores):
        return f"machine load {load.method}: judge the timings below with care"
    used = f"other programs used {load.others_cores:.2f} of this machine's {load.cores} cores ({load.method})"
    if not load.busy(threads):
        return f"machine idle: {used}"
    return (f"WARNING: {used}. The timings below cannot be trusted: they run slow and their ratios mislead. "
            "Stop the other work (or wait for it) and re-run.")


@contextmanager
def busy_processes(count: int = 1) -> Iterator[list[subprocess.Popen]]:
    """Spin `count` other Python processes on the CPU during the body, as another program would; always stopped."""
    spin = [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"]
    processes = [subprocess.Popen(spin, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        for process in processes:
            process.stdout.readline()  # it is running once it has said so
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()
            process.stdout.close()


@dataclass(frozen=True)
class OperatorStat:
    """One row of a profile: an operator, how often it ran, its own time and its share of the total."""

    name: str
    calls: int
    self_seconds: float
    share: float


def top_operators(
    profile, n: int = 10, *, device_time: bool = False, within: str | None = None
) -> list[OperatorStat]:
    """The `n` operators of a finished `torch.profiler.profile` with the most self time (on the device if
    `device_time`); with `within`, only those run inside `record_function(within)`. Shares are of the whole profile.
    """
    attribute = "self_device_time_total" if device_time else "self_cpu_time_total"
    events = profile.events()
    total = sum(getattr(event, attribute, 0.0) for event in events) or 1.0
    calls, micros = Counter(), Counter()
    for event in events:
        if within is None or _ran_inside(event, within):
            calls[event.name] += 1
            micros[event.name] += getattr(event, attribute, 0.0)
    return [OperatorStat(name, calls[name], us / 1e6, us / total) for name, us in micros.most_common(n)]


def _ran_inside(event, label: str) -> bool:
    """Whether a profiler event is `label` or ran inside it (one of its ancestors on the same thread)."""
    while event is not None and event.name != label:
        event = event.cpu_parent
    return event is not None


def format_operator_table(stats: list[OperatorStat]) -> str:
    """Render `top_operators(...)` as a text table: operator, calls, self milliseconds, share."""
    width = max([len("operator"), *(len(stat.name) for stat in stats)])
    lines = [f"{'operator':<{width}}  {'calls':>6}  {'self ms':>9}  {'share':>6}"]
    lines += [
        f"{stat.name:<{width}}  {stat.calls:>6}  {stat.self_seconds * 1e3:>9.2f}  {stat.share:>6.1%}" for stat in stats
    ]
    return "\n".join(lines)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes taken by the tensors of a model's `state_dict` (parameters and buffers), shared ones once."""
    unique = {(t.data_ptr(), t.dtype, tuple(t.shape)): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save` of the model's weights on the CPU: the size of a weights-only file."""
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


def quantize_per_row_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D weight to int8 with one scale per output row: `weight ≈ q * scale`, `scale = max|row| / 127`."""
    weight = weight.detach().to(torch.float32)
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    quantized = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
    return quantized, scale


class Int8Linear(nn.Module):
    """A Linear layer storing its weight as int8 with a float scale per row: a quarter of the bytes, no faster."""

    def __init__(self, linear: nn.Linear) -> None:
        """Quantise a trained `nn.Linear` (its bias stays float)."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight_int8, scale = quantize_per_row_int8(linear.weight)
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.to(x.dtype) * self.scale.to(x.dtype)  # back to float, in the input's precision
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, weight=int8"


def quantize_linear_layers(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every `nn.Linear` replaced by an `Int8Linear`."""
    quantized = copy.deepcopy(model).eval()
    for name, module in list(quantized.named_modules()):
        if isinstance(module, nn.Linear):
            quantized.set_submodule(name, Int8Linear(module))
    return quantized
