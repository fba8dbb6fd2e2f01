"""Tests for mnist_guide.performance (and the figures and exercise solutions of notebook 10)."""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from mnist_guide import performance
from mnist_guide.models import MnistCNN
from mnist_guide.performance import (
    Int8Linear,
    MachineLoad,
    OperatorStat,
    busy_processes,
    compare_seconds,
    cpu_seconds_from_proc_stat,
    format_operator_table,
    load_report,
    machine_load,
    median_seconds,
    model_size_bytes,
    num_threads,
    quantize_linear_layers,
    quantize_per_row_int8,
    saved_size_bytes,
    top_operators,
)
from mnist_guide.plotting import plot_sparsity_accuracy, plot_speedups
from mnist_guide.solutions import performance as solutions

# --- timing -----------------------------------------------------------------------------------


def test_median_seconds_warms_up_then_times_and_returns_the_median(monkeypatch):
    calls = []
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # runs of 1, 3 and 2 seconds: median 2
    monkeypatch.setattr(performance.time, "perf_counter", lambda: next(ticks))
    result = median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5
    assert result == 2.0


def test_median_seconds_without_warmup_runs_only_the_timed_runs():
    calls = []
    seconds = median_seconds(lambda: calls.append(1), repeats=4, warmup=0)
    assert len(calls) == 4
    assert seconds >= 0


def test_compare_seconds_takes_turns_and_returns_each_median(monkeypatch):
    order = []
    ticks = iter([0.0, 1.0, 1.0, 4.0, 10.0, 12.0, 12.0, 13.0, 20.0, 21.5, 30.0, 32.0])
    monkeypatch.setattr(performance.time, "perf_counter", lambda: next(ticks))
    result = compare_seconds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert result == {"a": 1.5, "b": 2.0}  # a: 1, 2, 1.5 -> 1.5; b: 3, 1, 2 -> 2


# --- how busy the machine is ------------------------------------------------------------------

PROC_STAT = """cpu  300 0 100 1600 0 0 0 0 0 0
cpu0 100 0 50 800 0 0 0 0 0 0
cpu1 200 0 50 800 0 0 0 0 0 0
intr 12345 0 0
ctxt 6789
"""


def test_cpu_seconds_from_proc_stat_sums_the_listed_cpus():
    assert cpu_seconds_from_proc_stat(PROC_STAT) == (4.0, 20.0)  # 400 busy of 2000 ticks, 100 ticks a second
    assert cpu_seconds_from_proc_stat(PROC_STAT, cpus=[1]) == (2.5, 10.5)
    busy, total = cpu_seconds_from_proc_stat("cpu0 10 20 30 40 50 60 70 80 90 100\n", ticks_per_second=10)
    assert busy == (10 + 20 + 30 + 60 + 70 + 80) / 10, "user, nice, system, irq, softirq and steal; guest is inside user"
    assert total == busy + (40 + 50) / 10, "idle and iowait count in the total only"


def fake_proc_stat(busy_ticks: int, idle_ticks: int) -> str:
    """A /proc/stat whose cpus (those this process may run on) each show the given ticks."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return "".join(f"cpu{cpu} {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\n" for cpu in cpus)


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="reads the clock tick rate with os.sysconf")
def test_machine_load_counts_the_busy_time_of_others_not_its_own(tmp_path, monkeypatch):
    ticks = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text(fake_proc_stat(0, 0))
    cores = len(fake_proc_stat(0, 0).splitlines())
    own = iter([10.0, 10.0 + 0.25 * cores])  # this process used a quarter of every core

    def one_second_passes(seconds):
        stat.write_text(fake_proc_stat(busy_ticks=ticks * 3 // 4, idle_ticks=ticks // 4))  # every core 75 % busy

    monkeypatch.setattr(performance.time, "sleep", one_second_passes)
    monkeypatch.setattr(performance.time, "process_time", lambda: next(own))
    load = machine_load(1.0, stat_path=stat)
    assert load.method == "/proc/stat" and load.cores == cores
    assert math.isclose(load.others_cores, 0.5 * cores), "75 % busy, of which 25 % was this process: 50 % others"


def test_machine_load_without_proc_stat_falls_back_to_thread_scaling(tmp_path):
    load = machine_load(0.0, stat_path=tmp_path / "missing")
    assert load.method != "/proc/stat"
    assert math.isnan(load.others_cores) or 0.0 <= load.others_cores <= load.cores


def test_machine_load_on_this_machine_is_within_its_cores():
    load = machine_load(0.05)
    assert 0.0 <= load.others_cores <= load.cores


def test_busy_compares_the_free_cores_with_the_threads_wanted():
    assert not MachineLoad(0.1, 2, "test").busy(threads=2)
    assert MachineLoad(1.0, 2, "test").busy(threads=2)
    assert not MachineLoad(1.0, 2, "test").busy(threads=1), "one free core is enough for one thread"
    assert not MachineLoad(1.0, 8, "test").busy(threads=4)
    assert not MachineLoad(math.nan, 1, "not measured").busy(threads=1)


def test_load_report_warns_only_when_busy():
    assert load_report(MachineLoad(0.03, 2, "/proc/stat"), threads=2).startswith("machine idle: ")
    warning = load_report(MachineLoad(1.02, 2, "/proc/stat"), threads=2)
    assert warning.startswith("WARNING: ") and "1.02 of this machine's 2 cores" in warning
    assert "cannot be trusted" in warning
    assert "WARNING" not in load_report(MachineLoad(math.nan, 1, "not measured: one core"))


def test_busy_processes_spin_during_the_body_and_stop_after():
    with busy_processes(2) as processes:
        assert len(processes) == 2
        assert all(process.poll() is None for process in processes), "running inside the block"
    assert all(process.poll() is not None for process in processes), "stopped after it"


def test_busy_processes_stop_after_an_error():
    with pytest.raises(RuntimeError, match="boom"), busy_processes() as processes:
        raise RuntimeError("boom")
    assert all(process.poll() is not None for process in processes)


# --- threads ----------------------------------------------------------------------------------


def test_num_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with num_threads(1) as count:
        assert count == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_num_threads_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), num_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


# --- profiler table ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_profile():
    from torch.profiler import ProfilerActivity, profile

    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    batch = torch.randn(32, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            net(batch).sum().backward()
    return prof


def test_top_operators_ranks_by_self_time_with_shares(small_profile):
    top = top_operators(small_profile, 5)
    assert 1 <= len(top) <= 5
    assert all(isinstance(stat, OperatorStat) for stat in top)
    assert [s.self_seconds for s in top] == sorted((s.self_seconds for s in top), reverse=True)
    everything = top_operators(small_profile, 10_000)
    assert math.isclose(sum(s.share for s in everything), 1.0, rel_tol=1e-6)
    assert any("addmm" in s.name or "mm" in s.name for s in everything)


def test_top_operators_within_a_label_keeps_the_operators_run_inside_it():
    from torch.profiler import ProfilerActivity, profile, record_function

    net = nn.Linear(64, 10)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = torch.randn(32, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function("forward"):
                loss = net(batch).sum()
            loss.backward()
            with record_function("optimizer"):
                optimizer.step()
    everything = top_operators(prof, 10_000)
    inside = top_operators(prof, 10_000, within="optimizer")
    names = {stat.name for stat in inside}
    assert "optimizer" in names and not any("addmm" in name for name in names)
    assert any("sqrt" in name or "_foreach" in name for name in names), "Adam's element-wise work is inside"
    assert 0 < sum(stat.share for stat in inside) < sum(stat.share for stat in everything)
    forward = top_operators(prof, 10_000, within="forward")
    assert any("addmm" in stat.name or "mm" in stat.name for stat in forward)
    assert top_operators(prof, 10_000, within="no such label") == []


def test_format_operator_table_aligns_name_calls_milliseconds_and_share():
    table = format_operator_table(
        [OperatorStat("aten::convolution_backward", 6, 0.012345, 0.4), OperatorStat("aten::mm", 12, 0.003, 0.1)]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["operator", "calls", "self", "ms", "share"]
    assert lines[1].split() == ["aten::convolution_backward", "6", "12.35", "40.0%"]
    assert lines[2].split() == ["aten::mm", "12", "3.00", "10.0%"]
    assert len({len(line) for line in lines}) == 1


# --- size -------------------------------------------------------------------------------------


def test_model_size_bytes_counts_parameters_and_buffers():
    layer = nn.Linear(5, 10)
    assert model_size_bytes(layer) == (5 * 10 + 10) * 4
    norm = nn.BatchNorm1d(3)  # weight, bias, running mean, running var (float32) + num_batches_tracked (int64)
    assert model_size_bytes(norm) == 4 * 3 * 4 + 8


def test_model_size_bytes_counts_a_shared_tensor_once():
    embedding = nn.Embedding(20, 4)
    head = nn.Linear(4, 20, bias=False)
    head.weight = embedding.weight  # tied weights, as in language models
    tied = nn.ModuleDict({"embedding": embedding, "head": head})
    assert model_size_bytes(tied) == 20 * 4 * 4


def test_saved_size_bytes_is_the_file_size_and_deterministic(tmp_path):
    model = MnistCNN()
    size = saved_size_bytes(model)
    assert size > model_size_bytes(model)
    assert saved_size_bytes(MnistCNN()) == size
    path = tmp_path / "weights.pt"
    torch.save(dict(model.state_dict()), path)  # the tensors, without the module's version metadata
    assert path.stat().st_size == size


# --- int8 quantisation ------------------------------------------------------------------------


def test_quantize_per_row_int8_rounds_each_row_to_its_own_scale():
    torch.manual_seed(0)
    weight = torch.randn(6, 9) * torch.tensor([[0.01], [0.1], [1.0], [10.0], [100.0], [1000.0]])
    q, scale = quantize_per_row_int8(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape and scale.shape == (6, 1)
    assert torch.equal(q.abs().amax(dim=1), torch.full((6,), 127, dtype=torch.int8))
    assert ((q.float() * scale - weight).abs() <= scale / 2 + 1e-6 * scale).all()


def test_quantize_per_row_int8_keeps_a_zero_row_at_zero():
    weight = torch.zeros(2, 4)
    weight[1] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    q, scale = quantize_per_row_int8(weight)
    assert torch.equal(q[0], torch.zeros(4, dtype=torch.int8))
    assert torch.isfinite(scale).all() and (scale > 0).all()


def test_int8_linear_matches_the_float_layer_within_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(32, 8)
    layer = Int8Linear(linear)
    x = torch.randn(5, 32)
    torch.testing.assert_close(layer(x), linear(x), rtol=0, atol=0.02)
    assert layer.weight_int8.dtype == torch.int8
    assert "weight=int8" in repr(layer)
    assert torch.equal(layer.bias, linear.bias.detach())


def test_int8_linear_without_bias_and_in_bfloat16():
    linear = nn.Linear(16, 4, bias=False)
    layer = Int8Linear(linear)
    assert layer.bias is None
    out = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 4)


def test_quantize_linear_layers_swaps_every_linear_of_a_copy():
    torch.manual_seed(0)
    model = MnistCNN().eval()
    quantized = quantize_linear_layers(model)
    assert not quantized.training
    assert sum(isinstance(m, Int8Linear) for m in quantized.modules()) == 2
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2, "the original is left alone"
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), model(x), rtol=0, atol=0.05)
    assert model_size_bytes(quantized) < model_size_bytes(model) / 3


# --- figures ----------------------------------------------------------------------------------


def test_plot_speedups_draws_one_bar_per_ratio():
    figure = plot_speedups(["a", "b", "c"], [1.5, 0.7, 1.0], title="t")
    assert len(figure.axes[0].patches) == 3
    plt.close(figure)


def test_plot_sparsity_accuracy_draws_the_curve_and_the_baseline():
    figure = plot_sparsity_accuracy([0.0, 0.5, 0.9], [0.99, 0.98, 0.5], baseline=0.99)
    assert len(figure.axes[0].lines) == 2
    plt.close(figure)


# --- exercise solutions -----------------------------------------------------------------------


def test_graph_breaks_counts_data_dependent_python_control_flow():
    def tensor_ops_only(x):
        return (x * 2 + 1).relu()

    def branches_on_a_value(x):
        if x.sum().item() > 0:  # needs the value: Dynamo breaks the graph here
            return x + 1
        return x - 1

    assert solutions.graph_breaks(tensor_ops_only, torch.randn(4)) == 0
    assert solutions.graph_breaks(branches_on_a_value, torch.randn(4)) == 1


def test_quantize_rows_matches_int8_and_bounds_the_error_at_4_bits():
    torch.manual_seed(0)
    weight = torch.randn(7, 13)
    assert torch.equal(solutions.quantize_rows(weight, 8)[0], quantize_per_row_int8(weight)[0])
    q, scale = solutions.quantize_rows(weight, 4)
    assert q.abs().max() == 7
    assert ((q.float() * scale - weight).abs() <= scale / 2 + 1e-6).all()


def test_weight_sparsity_reads_the_pruned_fraction():
    torch.manual_seed(0)
    model = MnistCNN()
    assert solutions.weight_sparsity(model) < 0.01
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.6)
    assert abs(solutions.weight_sparsity(model) - 0.6) < 1e-4
