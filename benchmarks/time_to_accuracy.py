"""Time to 99.0 % MNIST test accuracy: the course's fast recipe against the PyTorch examples' classic recipe.

Both train back to back in this process, on the same normalised tensors held in memory, and are
evaluated on the full 10,000-image test set. Printed for each: the training wall seconds
(evaluation excluded) until the test accuracy reaches the target; then the ratio of the two.

- fast recipe (mnist_guide.training.FAST_RECIPE): the course's ~110k-parameter BatchNorm CNN with
  max-pooling before norm and ReLU, batch 256, Adam with a one-cycle schedule, one-pixel shifts,
  label smoothing 0.1, channels_last, for 65 % of one epoch. A one-cycle schedule is set for a
  whole run, so its time to the target is that of the *shortest* schedule reaching it: 1 such
  epoch, then 2, ..., each a fresh run. This runs for each seed (0, 1, 2 by default); the ratio is
  taken on the median of their times.
- classic recipe (github.com/pytorch/examples, mnist/main.py): conv 32 and 64 (3 × 3), max-pool,
  dropout 0.25 and 0.5, 9216-128-10, batch 64, Adadelta lr 1.0, StepLR gamma 0.7 per epoch,
  evaluated after every epoch until the target, once.

A script, not a test: nothing here asserts on time. Other work on the machine slows both recipes
(and the course's two-thread kernels more than most): run it on an idle machine, and compare
ratios from one run.

    python benchmarks/time_to_accuracy.py [--seeds 0 1 2] [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnist_guide.data import TensorLoader, mnist_tensors
from mnist_guide.models import build_model, count_parameters
from mnist_guide.runtime import atomic_write, describe_environment, pick_device, seed_everything
from mnist_guide.training import FAST_RECIPE, History, fit, train_course_model


class ClassicNet(nn.Module):
    """The network of the PyTorch examples' MNIST script (1.2M parameters), returning log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        # cross-entropy of log-probabilities equals the example's nll_loss (log_softmax is idempotent)
        return F.log_softmax(self.fc2(x), dim=1)


@dataclass
class Result:
    """One recipe's outcome: seconds to the target (None if missed), best accuracy, epochs and time used."""

    name: str
    seconds_to_target: float | None = None
    epochs_to_target: float | None = None  # passes over the training set (a fast-recipe epoch is part of one)
    best_accuracy: float = 0.0
    seconds_used: float = 0.0
    epochs_used: float = 0
    log: list[str] = field(default_factory=list)


def report_epoch(name: str, run_label: str) -> Callable[[int, History], None]:
    """An `on_epoch_end` hook that prints the epoch's test accuracy and cumulative training seconds."""

    def hook(epoch: int, history: History) -> None:
        print(f"  {name:<7} {run_label:<18} epoch {epoch + 1}: test accuracy {history.test_accuracy[-1]:.2%}, "
              f"{sum(history.epoch_seconds):6.1f} s of training", flush=True)

    return hook


def run_course(data, target: float, seed: int, max_epochs: int, device: torch.device) -> Result:
    """The shortest one-cycle schedule of the fast recipe reaching `target` with `seed`: 1 of its epochs, then 2, ..."""
    result = Result(f"course, seed {seed}")
    for epochs in range(1, max_epochs + 1):
        passes = epochs * FAST_RECIPE.epoch_fraction  # over the training set: each fast-recipe epoch sees part of it
        run = train_course_model(replace(FAST_RECIPE, epochs=epochs, seed=seed), device=device, data=data, progress=False,
                                 on_epoch_end=report_epoch("course", f"seed {seed}, {passes:g}-epoch"))
        result.seconds_used += run.train_seconds
        result.epochs_used += passes
        result.best_accuracy = max(result.best_accuracy, run.history.test_accuracy[-1])
        if run.history.test_accuracy[-1] >= target:
            result.seconds_to_target, result.epochs_to_target = run.train_seconds, passes
            break
    return result


def run_classic(data, target: float, max_epochs: int, device: torch.device) -> Result:
    """The PyTorch examples' recipe, epoch by epoch, until `target` or `max_epochs`."""
    images, labels, test_images, test_labels = data
    result = Result("classic")
    seed_everything(1)  # the example's default seed
    train_loader = TensorLoader(images, labels, 64, shuffle=True, seed=1, device=device)
    test_loader = TensorLoader(test_images, test_labels, 1000, device=device)
    model = ClassicNet().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

    def stop_at_target(epoch: int, history: History) -> None:
        report_epoch("classic", "Adadelta")(epoch, history)
        if history.test_accuracy[-1] >= target and result.seconds_to_target is None:
            result.seconds_to_target, result.epochs_to_target = sum(history.epoch_seconds), epoch + 1

    history = History()
    for epoch in range(max_epochs):
        fit(model, train_loader, test_loader, epochs=1, optimizer=optimizer, scheduler=scheduler,
            scheduler_step="epoch", device=device, start_epoch=epoch, history=history, progress=False,
            on_epoch_end=stop_at_target)
        if result.seconds_to_target is not None:
            break
    result.best_accuracy = max(history.test_accuracy)
    result.seconds_used, result.epochs_used = sum(history.epoch_seconds), history.epochs
    return result


def warm_up(data, device: torch.device) -> None:
    """A few untimed steps of both models, so one-time set-up costs land on neither recipe."""
    images, labels, _, _ = data
    for model, memory_format in ((build_model(FAST_RECIPE.model), torch.channels_last), (ClassicNet(), torch.contiguous_format)):
        model = model.to(device, memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        for batch in (slice(0, 256), slice(256, 512), slice(512, 576)):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch].to(memory_format=memory_format)), labels[batch]).backward()
            optimizer.step()


def describe(result: Result, target: float) -> str:
    if result.seconds_to_target is not None:
        return (f"{result.name:<15} reached {target:.1%} in {result.seconds_to_target:6.1f} s "
                f"({result.epochs_to_target:g} epoch{'s' if result.epochs_to_target > 1 else ''}, {result.best_accuracy:.2%})")
    return (f"{result.name:<15} did NOT reach {target:.1%}: {result.best_accuracy:.2%} "
            f"after {result.epochs_used:g} epochs, {result.seconds_used:.1f} s of training")


def plot(results: dict, path: Path) -> None:
    """Bars of the seconds to the target: each course seed, and the classic recipe (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"course, seed {seed}" for seed in results["seeds"]] + ["classic"]
    seconds = [*results["course_seconds"], results["classic_seconds"]]
    figure, axes = plt.subplots(figsize=(7, 3))
    bars = axes.barh(names[::-1], [s or 0 for s in seconds[::-1]], color=["tab:gray"] + ["tab:blue"] * len(results["seeds"]))
    axes.bar_label(bars, labels=["missed" if s is None else f"{s:.1f} s" for s in seconds[::-1]], padding=3)
    axes.set_xscale("log")
    axes.set_xlabel(f"training seconds to {results['target']:.1%} test accuracy (log scale)")
    ratio = results["ratio"]
    axes.set_title(f"Time to accuracy: {ratio:.0f}x on the median" if ratio else "Time to accuracy")
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach (default 0.99)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the course recipe (default 0 1 2)")
    parser.add_argument("--course-max-epochs", type=int, default=3, help="longest course schedule tried (default 3)")
    parser.add_argument("--classic-max-epochs", type=int, default=6,
                        help="budget of the classic recipe in epochs (default 6, about 5 minutes on 2 cores)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="draw the seconds to the target to this PNG")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    processor = describe_environment("cpu")["device_name"]
    images, labels = mnist_tensors(train=True)
    test_images, test_labels = mnist_tensors(train=False)
    data = (images.to(device), labels.to(device), test_images.to(device), test_labels.to(device))
    print(f"torch {torch.__version__} on {device} ({processor}), "
          f"{torch.get_num_threads()} threads; target {args.target:.1%} test accuracy on {len(test_images):,} images")
    print(f"fast recipe: {count_parameters(build_model(FAST_RECIPE.model)):,} parameters, batch {FAST_RECIPE.batch_size}, "
          f"{FAST_RECIPE.epoch_fraction:.0%} of an epoch; "
          f"classic recipe: {count_parameters(ClassicNet()):,} parameters")

    started = time.perf_counter()
    warm_up(data, device)
    courses = [run_course(data, args.target, seed, args.course_max_epochs, device) for seed in args.seeds]
    classic = run_classic(data, args.target, args.classic_max_epochs, device)
    print()
    for result in (*courses, classic):
        print(describe(result, args.target))
    course_seconds = [result.seconds_to_target for result in courses]
    reached = [s for s in course_seconds if s is not None]
    median = statistics.median(course_seconds) if len(reached) == len(courses) else None
    ratio = classic.seconds_to_target / median if median and classic.seconds_to_target else None
    if ratio:
        print(f"ratio: the course's median {median:.2f} s reached {args.target:.1%} {ratio:.1f}x faster than the classic recipe")
    else:
        print("ratio: not defined (a recipe missed the target)")
    print(f"(benchmark wall time {time.perf_counter() - started:.0f} s; training seconds exclude evaluation)")
    results = {"target": args.target, "seeds": args.seeds, "processor": processor,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "course_seconds": [None if s is None else round(s, 3) for s in course_seconds],
               "course_accuracy": [round(result.best_accuracy, 4) for result in courses],
               "classic_seconds": None if classic.seconds_to_target is None else round(classic.seconds_to_target, 2),
               "ratio": None if ratio is None else round(ratio, 2)}
    if args.json:
        atomic_write(args.json, lambda temporary: temporary.write_text(json.dumps(results, indent=2) + "\n"))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
