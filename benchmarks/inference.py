"""Inference speed of the deployed forms of the course CNN, against this machine's measured peak.

Measures, in one run: the fp32 matmul peak of this machine (GFLOP/s, the torch threads in use);
the FLOPs of one image (`torch.utils.flop_counter.FlopCounterMode`); then for each form the median
batch-1 latency, the batch-256 throughput and the GFLOP/s that throughput means, as a fraction of
the peak. Rounds alternate between the forms, so a machine that gets busier or quieter during the
run affects them all alike. Files go to artifacts/benchmarks/.

Forms: eager (channels_last, as `export.make_deployable` keeps it), TorchScript, TorchScript frozen
and optimised for inference (oneDNN), torch.export, AOTInductor, torch.compile with weight freezing,
and ONNX Runtime.

    python benchmarks/inference.py [--rounds 5] [--threads N] [--json FILE] [--plot FILE.png]

Compiling AOTInductor and torch.compile takes about a minute cold. Taught alongside notebooks/09_deployment.ipynb.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mnist_guide import export
from mnist_guide.runtime import artifacts_dir, atomic_write, describe_environment
from mnist_guide.training import load_or_train_course_model

THROUGHPUT_BATCH = 256


def timed_calls(model: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, calls: int) -> list[float]:
    """Seconds taken by each of `calls` calls of `model(pixels)`."""
    seconds = []
    with torch.inference_mode():
        for _ in range(calls):
            started = time.perf_counter()
            model(pixels)
            seconds.append(time.perf_counter() - started)
    return seconds


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The best fp32 GFLOP/s of a `size` x `size` matmul over `repeats` calls, with the threads torch uses."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(timed_calls(lambda x: x @ b, a, repeats))
    return 2 * size**3 / best / 1e9


def flops_per_image(model: torch.nn.Module) -> float:
    """Forward FLOPs of one image, counted by FlopCounterMode on a batch of 64."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(export.example_pixels(64))
    return counter.get_total_flops() / 64


def frozen_torchscript(deployable: torch.nn.Module) -> torch.jit.ScriptModule:
    """TorchScript with weights folded in (`torch.jit.freeze`) and oneDNN rewrites (`optimize_for_inference`)."""
    with export.quiet_torchscript_deprecation():
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(deployable)))


def compiled_frozen(deployable: torch.nn.Module, mode: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`torch.compile` with Inductor's weight freezing (constants folded into the generated code)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(deployable, mode=mode, dynamic=False)


def build_forms(folder: Path, mode: str | None) -> tuple[dict[str, Callable], torch.nn.Module]:
    """Every form, each exported one saved and loaded back from disk; and the eager model."""
    model, _ = load_or_train_course_model(device="cpu", progress=False)
    deployable = export.make_deployable(model)
    program = export.export_program(deployable)
    forms: dict[str, Callable] = {"eager": deployable}
    forms["torchscript"] = export.load_deployed(
        export.save_torchscript(export.to_torchscript(deployable), folder / "mnist_cnn.pt"))
    forms["torchscript frozen"] = frozen_torchscript(deployable)
    forms["torch.export"] = export.load_deployed(export.save_program(program, folder / "mnist_cnn.pt2"))
    print("compiling the AOTInductor package and torch.compile (about a minute cold) ...", file=sys.stderr, flush=True)
    forms["aotinductor"] = export.load_deployed(export.compile_aoti(program, folder / "mnist_cnn_aoti.pt2"))
    forms["compile frozen"] = compiled_frozen(deployable, mode)
    forms["onnxruntime"] = export.load_deployed(export.export_onnx(deployable, folder / "mnist_cnn.onnx"))
    return forms, deployable


def plot(results: dict, path: Path) -> None:
    """Bars of each form's batch-256 GFLOP/s, with the measured peak drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["forms"])
    values = [results["forms"][name]["gflops"] for name in names]
    figure, axes = plt.subplots(figsize=(8, 3.8))
    bars = axes.barh(names[::-1], values[::-1], color="tab:blue")
    axes.bar_label(bars, labels=[f"{v / results['peak_gflops']:.0%}" for v in values[::-1]], padding=3)
    axes.axvline(results["peak_gflops"], color="tab:red", linestyle="--", label=f"fp32 matmul peak {results['peak_gflops']:.0f} GFLOP/s")
    axes.set_xlabel(f"GFLOP/s at batch {THROUGHPUT_BATCH} (label: share of the peak)")
    axes.set_title(f"Course CNN inference, {results['threads']} threads, {results['processor']}")
    axes.set_xlim(0, results["peak_gflops"] * 1.2)
    axes.legend(loc="upper right")
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds over the forms (default 5)")
    parser.add_argument("--latency-calls", type=int, default=400, help="batch-1 calls per form in all (default 400)")
    parser.add_argument("--throughput-calls", type=int, default=40, help="batch-256 calls per form in all (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile-mode", default=None, help='torch.compile mode, e.g. "max-autotune-no-cudagraphs" (default: none)')
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="draw the GFLOP/s of each form to this PNG")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    peak = matmul_peak_gflops()
    forms, deployable = build_forms(artifacts_dir() / "benchmarks", args.compile_mode)
    flops = flops_per_image(deployable)
    one, batch = export.example_pixels(1), export.example_pixels(THROUGHPUT_BATCH)
    latency: dict[str, list[float]] = {name: [] for name in forms}
    throughput: dict[str, list[float]] = {name: [] for name in forms}
    for model in forms.values():  # warm-up: first calls allocate and, for some forms, specialise
        timed_calls(model, one, 20)
        timed_calls(model, batch, 3)
    for _ in range(args.rounds):
        for name, model in forms.items():
            latency[name] += timed_calls(model, one, max(1, args.latency_calls // args.rounds))
            throughput[name] += timed_calls(model, batch, max(1, args.throughput_calls // args.rounds))
    peak = max(peak, matmul_peak_gflops())  # measured again after the forms: the better of the two

    results = {
        "processor": describe_environment("cpu")["device_name"], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "peak_gflops": round(peak, 1), "mflop_per_image": round(flops / 1e6, 3),
        "forms": {},
    }
    for name in forms:
        images_per_s = THROUGHPUT_BATCH / statistics.median(throughput[name])
        results["forms"][name] = {
            "batch1_ms": round(statistics.median(latency[name]) * 1e3, 4),
            "throughput": round(images_per_s, 1),
            "gflops": round(images_per_s * flops / 1e9, 2),
        }
    print(f"torch {torch.__version__}, {results['threads']} threads, {results['processor']}; "
          f"fp32 matmul peak {peak:.0f} GFLOP/s; {flops / 1e6:.2f} MFLOP per image; medians over {args.rounds} rounds")
    print(f"{'form':<19} {'batch-1':>10} {'vs eager':>9} {'batch-256':>14} {'vs eager':>9} {'GFLOP/s':>8} {'of peak':>8}")
    eager = results["forms"]["eager"]
    for name, form in results["forms"].items():
        print(f"{name:<19} {form['batch1_ms']:>7.3f} ms {eager['batch1_ms'] / form['batch1_ms']:>8.2f}x "
              f"{form['throughput']:>8,.0f} img/s {form['throughput'] / eager['throughput']:>8.2f}x "
              f"{form['gflops']:>8.1f} {form['gflops'] / peak:>7.0%}")
    best = max(results["forms"], key=lambda name: results["forms"][name]["throughput"])
    print(f"best at batch {THROUGHPUT_BATCH}: {best}, {results['forms'][best]['gflops'] / peak:.0%} of the peak")
    if args.json:
        atomic_write(args.json, lambda temporary: temporary.write_text(json.dumps(results, indent=2) + "\n"))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
