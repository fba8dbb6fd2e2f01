"""Inference speed of the deployed forms of the course CNN: eager, TorchScript, torch.export, AOTInductor.

Prints the median batch-1 latency and the batch-256 throughput of each form on the CPU, and their
ratios to eager measured in the same run (rounds alternate between the forms, so a machine that
gets busier or quieter during the run affects them all alike). Files go to artifacts/benchmarks/.

    python benchmarks/inference.py [--rounds 5] [--latency-calls 400] [--throughput-calls 40] [--threads N]

The AOTInductor package is compiled first (about 30 s cold). Taught alongside notebooks/09_deployment.ipynb.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from mnist_guide import export
from mnist_guide.runtime import artifacts_dir
from mnist_guide.training import load_or_train_course_model


def timed_calls(model: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, calls: int) -> list[float]:
    """Seconds taken by each of `calls` calls of `model(pixels)`."""
    seconds = []
    with torch.inference_mode():
        for _ in range(calls):
            started = time.perf_counter()
            model(pixels)
            seconds.append(time.perf_counter() - started)
    return seconds


def build_forms(folder) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The eager model and the three exported files, each loaded back from disk."""
    model, _ = load_or_train_course_model(device="cpu", progress=False)
    deployable = export.make_deployable(model)
    torchscript_file = export.save_torchscript(export.to_torchscript(deployable), folder / "mnist_cnn.pt")
    program = export.export_program(deployable)
    program_file = export.save_program(program, folder / "mnist_cnn.pt2")
    print("compiling the AOTInductor package (about 30 s cold) ...", file=sys.stderr, flush=True)
    aoti_file = export.compile_aoti(program, folder / "mnist_cnn_aoti.pt2")
    return {
        "eager": deployable,
        "torchscript": export.load_deployed(torchscript_file),
        "torch.export": export.load_deployed(program_file),
        "aotinductor": export.load_deployed(aoti_file),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds over the forms (default 5)")
    parser.add_argument("--latency-calls", type=int, default=400, help="batch-1 calls per form in all (default 400)")
    parser.add_argument("--throughput-calls", type=int, default=40, help="batch-256 calls per form in all (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    forms = build_forms(artifacts_dir() / "benchmarks")
    one, batch = export.example_pixels(1), export.example_pixels(256)
    latency: dict[str, list[float]] = {name: [] for name in forms}
    throughput: dict[str, list[float]] = {name: [] for name in forms}
    for model in forms.values():  # warm-up: first calls allocate and, for some forms, specialise
        timed_calls(model, one, 20)
        timed_calls(model, batch, 3)
    for _ in range(args.rounds):
        for name, model in forms.items():
            latency[name] += timed_calls(model, one, max(1, args.latency_calls // args.rounds))
            throughput[name] += timed_calls(model, batch, max(1, args.throughput_calls // args.rounds))

    medians_1 = {name: statistics.median(values) for name, values in latency.items()}
    images_per_s = {name: len(batch) / statistics.median(values) for name, values in throughput.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; medians over {args.rounds} alternating rounds")
    print(f"{'form':<14} {'batch-1 latency':>16} {'speed-up':>9} {'batch-256 throughput':>22} {'ratio':>7}")
    for name in forms:
        print(
            f"{name:<14} {medians_1[name] * 1e3:>13.3f} ms {medians_1['eager'] / medians_1[name]:>8.2f}x "
            f"{images_per_s[name]:>16,.0f} img/s {images_per_s[name] / images_per_s['eager']:>6.2f}x"
        )
    print("speed-up and ratio: relative to eager in this run (above 1 = faster).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
