"""Time to 99.0 % MNIST test accuracy: the course recipe against the PyTorch examples' classic recipe.

Both train back to back in this process, on the same normalised tensors held in memory, and are
evaluated on the full 10,000-image test set after every epoch. Printed for each: the training wall
seconds (evaluation excluded) until the test accuracy first reaches the target, or the best
accuracy reached within the stated budget; then the ratio of the two.

- course recipe (mnist_guide.training.Recipe): the ~110k-parameter BatchNorm CNN, batch 256, Adam with
  a one-cycle schedule, one-pixel shifts, channels_last. A one-cycle schedule is set for a whole
  run, so its time to the target is that of the *shortest* schedule reaching it: 1 epoch, then
  2, ... up to --course-max-epochs, each a fresh run.
- classic recipe (github.com/pytorch/examples, mnist/main.py): conv 32 and 64 (3 × 3), max-pool,
  dropout 0.25 and 0.5, 9216-128-10, batch 64, Adadelta lr 1.0, StepLR gamma 0.7 per epoch,
  trained for up to --classic-max-epochs epochs.

A script, not a test: nothing here asserts on time. Other work on the machine slows both recipes
(and the course's two-thread kernels more than most), so compare ratios from one run.

    python benchmarks/time_to_accuracy.py [--target 0.99] [--classic-max-epochs 6] [--course-max-epochs 5]

Measured on a 2-core Xeon (AVX-512) with other work beside it: the course recipe reached 99.05 %
with a 1-epoch schedule in 5.0 s of training; the classic recipe reached 99.08 % after 5 epochs,
236 s: 47x.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from mnist_guide.data import TensorLoader, mnist_tensors
from mnist_guide.models import build_model, count_parameters
from mnist_guide.runtime import pick_device, seed_everything
from mnist_guide.training import History, Recipe, fit, train_course_model


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
    epochs_to_target: int | None = None
    best_accuracy: float = 0.0
    seconds_used: float = 0.0
    epochs_used: int = 0
    log: list[str] = field(default_factory=list)


def report_epoch(name: str, run_label: str) -> Callable[[int, History], None]:
    """An `on_epoch_end` hook that prints the epoch's test accuracy and cumulative training seconds."""

    def hook(epoch: int, history: History) -> None:
        print(f"  {name:<7} {run_label:<16} epoch {epoch + 1}: test accuracy {history.test_accuracy[-1]:.2%}, "
              f"{sum(history.epoch_seconds):6.1f} s of training", flush=True)

    return hook


def run_course(data, target: float, max_epochs: int, device: torch.device) -> Result:
    """The shortest course schedule reaching `target`: a fresh 1-epoch run, then 2 epochs, ..."""
    result = Result("course")
    for epochs in range(1, max_epochs + 1):
        run = train_course_model(replace(Recipe(), epochs=epochs), device=device, data=data, progress=False,
                                 on_epoch_end=report_epoch("course", f"{epochs}-epoch cycle"))
        result.seconds_used += run.train_seconds
        result.epochs_used += epochs
        result.best_accuracy = max(result.best_accuracy, run.history.test_accuracy[-1])
        if run.history.test_accuracy[-1] >= target:
            result.seconds_to_target, result.epochs_to_target = run.train_seconds, epochs
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
    for model, memory_format in ((build_model(), torch.channels_last), (ClassicNet(), torch.contiguous_format)):
        model = model.to(device, memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        for batch in (slice(0, 256), slice(256, 512), slice(512, 576)):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch].to(memory_format=memory_format)), labels[batch]).backward()
            optimizer.step()


def describe(result: Result, target: float) -> str:
    if result.seconds_to_target is not None:
        return (f"{result.name:<8} reached {target:.1%} in {result.seconds_to_target:6.1f} s "
                f"({result.epochs_to_target} epoch{'s' if result.epochs_to_target != 1 else ''})")
    return (f"{result.name:<8} did NOT reach {target:.1%} within its budget: best {result.best_accuracy:.2%} "
            f"in {result.epochs_used} epochs of training, {result.seconds_used:.1f} s in all")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach (default 0.99)")
    parser.add_argument("--course-max-epochs", type=int, default=5, help="longest course schedule tried (default 5)")
    parser.add_argument("--classic-max-epochs", type=int, default=6,
                        help="budget of the classic recipe in epochs (default 6, about 5 minutes on 2 cores)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    images, labels = mnist_tensors(train=True)
    test_images, test_labels = mnist_tensors(train=False)
    data = (images.to(device), labels.to(device), test_images.to(device), test_labels.to(device))
    print(f"torch {torch.__version__} on {device} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads; target {args.target:.1%} test accuracy on {len(test_images):,} images")
    print(f"course recipe: {count_parameters(build_model()):,} parameters; "
          f"classic recipe: {count_parameters(ClassicNet()):,} parameters")

    started = time.perf_counter()
    warm_up(data, device)
    course = run_course(data, args.target, args.course_max_epochs, device)
    classic = run_classic(data, args.target, args.classic_max_epochs, device)
    print()
    print(describe(course, args.target))
    print(describe(classic, args.target))
    if course.seconds_to_target is not None and classic.seconds_to_target is not None:
        print(f"ratio: the course recipe reached {args.target:.1%} "
              f"{classic.seconds_to_target / course.seconds_to_target:.1f}x faster")
    elif course.seconds_to_target is not None:
        print(f"ratio: more than {classic.seconds_used / course.seconds_to_target:.1f}x faster "
              f"(the classic recipe missed the target in {classic.seconds_used:.1f} s)")
    else:
        print("ratio: not defined (the course recipe missed the target)")
    print(f"(benchmark wall time {time.perf_counter() - started:.0f} s; training seconds exclude evaluation)")


if __name__ == "__main__":
    main()
