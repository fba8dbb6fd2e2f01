"""Training: one step, one epoch, evaluation, `fit()` with its history, and the course's recipe."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from mnist_guide.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from mnist_guide.data import MnistSplits, make_loaders, random_affine, random_shift
from mnist_guide.models import CNNConfig, ViTConfig, build_model
from mnist_guide.runtime import artifacts_dir, atomic_write, library_versions, pick_device, seed_everything


@dataclass
class History:
    """Per-epoch figures of a training run: losses, accuracies, training seconds and learning rate."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


def _gradient_sync(model: nn.Module, sync: bool):
    """Let a data-parallel model skip its gradient all-reduce on all but a step's last micro-batch."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP
        model.set_requires_gradient_sync(sync)
    return model.no_sync() if not sync and hasattr(model, "no_sync") else contextlib.nullcontext()


def train_step(
    model: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], optimizer: torch.optim.Optimizer,
    label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step over one or more micro-batches; returns (summed loss, correct, samples).

    Each micro-batch's loss is weighted by its share of the samples: the gradients of one big batch.
    """
    samples = sum(len(labels) for _, labels in micro_batches)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, correct = 0, 0
    for index, (images, labels) in enumerate(micro_batches):
        with _gradient_sync(model, sync=index == len(micro_batches) - 1):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing) * (len(labels) / samples)
            loss.backward()
        loss_sum = loss_sum + loss.detach() * samples
        correct = correct + (logits.detach().argmax(dim=1) == labels).sum()
    optimizer.step()
    return loss_sum, correct, samples


class WeightAverage:
    """An exponential moving average of `source`'s weights and BatchNorm statistics, updated after every step.

    Each step moves the average `1 - decay` of the way to the current weights; the initial ones fade as `decay ** steps`.
    """

    def __init__(self, source: nn.Module, decay: float) -> None:
        self.source, self.decay, self.steps = source, decay, 0
        self.model = copy.deepcopy(source).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        weight = 1 - self.decay
        for average, current in zip(self.model.state_dict().values(), self.source.state_dict().values(), strict=True):
            if average.is_floating_point():
                average.lerp_(current, weight)
            else:
                average.copy_(current)


def train_one_epoch(
    model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *, scheduler: LRScheduler | None = None,
    device: torch.device | str = "cpu", memory_format: torch.memory_format = torch.contiguous_format, accumulate: int = 1,
    label_smoothing: float = 0.0, average: WeightAverage | None = None
) -> tuple[float, float]:
    """One pass over `loader`, a `train_step` per batch (in `accumulate` micro-batches); returns mean loss, accuracy."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        parts = list(zip(images.chunk(accumulate), labels.chunk(accumulate), strict=True))
        step_loss, step_correct, samples = train_step(model, parts, optimizer, label_smoothing)
        if scheduler is not None:
            scheduler.step()
        if average is not None:
            average.update()
        loss_sum, correct, seen = loss_sum + step_loss, correct + step_correct, seen + samples
    return float(loss_sum) / seen, int(correct) / seen


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, *, device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format, all_reduce: Callable | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over `loader`; `all_reduce` sums the totals over processes."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    for images, labels in loader:
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        totals += torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item(),
                                (logits.argmax(dim=1) == labels).sum().item(), len(labels)], dtype=torch.float64)
    if all_reduce is not None:
        totals = all_reduce(totals)
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def fit(
    model: nn.Module, train_loader: Iterable, test_loader: Iterable, *, epochs: int, optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None = None, scheduler_step: str = "batch", device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format, start_epoch: int = 0, history: History | None = None,
    progress: bool = True, on_epoch_end: Callable[[int, History], None] | None = None, label_smoothing: float = 0.0,
    average: WeightAverage | None = None
) -> History:
    """Train `model` for `epochs`, evaluating after each; returns the loss and accuracy history.

    The scheduler steps per `"batch"` (one-cycle) or `"epoch"`; `start_epoch` and `history` continue a restored run.
    The training loss may smooth its targets (`label_smoothing`); the test loss never does. With an `average`
    of `model`'s weights, the average is what is evaluated.
    """
    from tqdm.auto import tqdm

    history = history if history is not None else History()
    for epoch in range(start_epoch, start_epoch + epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        learning_rate = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        train_loss, train_accuracy = train_one_epoch(
            model, tqdm(train_loader, desc=f"epoch {epoch + 1}") if progress else train_loader, optimizer,
            scheduler=scheduler if scheduler_step == "batch" else None, device=device, memory_format=memory_format,
            label_smoothing=label_smoothing, average=average)
        if scheduler is not None and scheduler_step == "epoch":
            scheduler.step()
        seconds = time.perf_counter() - started
        test_loss, test_accuracy = evaluate(average.model if average is not None else model, test_loader, device=device,
                                            memory_format=memory_format)
        for key, value in zip(History.__dataclass_fields__,
                              (train_loss, train_accuracy, test_loss, test_accuracy, seconds, learning_rate), strict=True):
            getattr(history, key).append(value)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history


@dataclass(frozen=True)
class Recipe:
    """The course's recipe: Adam, a one-cycle rate (and beta1), batch 256, `max_shift`-pixel shifts, channels_last.

    `max_degrees` or `max_scale` turn the shifts into random affine maps (`data.random_affine`); `weight_average`
    is the decay of a `WeightAverage`, the model trained and saved (0: none); `epoch_fraction` < 1 ends each
    epoch early (after that share of the shuffled images); `label_smoothing` is the training loss's (notebook 04).
    """

    epochs: int = 5
    batch_size: int = 256
    max_lr: float = 1e-2
    betas: tuple[float, float] = (0.95, 0.9)
    weight_decay: float = 0.0
    max_shift: int = 1
    channels_last: bool = True
    seed: int = 0
    model: CNNConfig | ViTConfig = field(default_factory=CNNConfig)
    min_beta1: float = 0.85
    epoch_fraction: float = 1.0
    label_smoothing: float = 0.0
    max_degrees: float = 0.0
    max_scale: float = 0.0
    weight_average: float = 0.0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # plain data (lists, not tuples) for checkpoints and metrics.json


#: The record recipe behind `mnist-guide train`: 10 epochs of digits turned, scaled and moved, dropout before the last
#: layer, an average of the weights, pooling first (norm and ReLU on a quarter of the pixels: more epochs a minute),
#: and a model that reads each digit five times, shifted (evaluation, export and serving all see the same model).
RECORD_RECIPE = Recipe(epochs=10, max_shift=2, max_degrees=10.0, max_scale=0.1, weight_average=0.999,
                       model=CNNConfig(dropout=0.25, pool_first=True, test_shifts=True))

#: The fast recipe of `benchmarks/time_to_accuracy.py`, tuned to reach 99 % soonest: 65 % of one epoch, with pooling
#: first (norm and ReLU on a quarter of the pixels) and label smoothing 0.1.
FAST_RECIPE = Recipe(epochs=1, epoch_fraction=0.65, label_smoothing=0.1, model=CNNConfig(pool_first=True))

#: The ViT's recipe: a gentler peak learning rate, and no channels_last (it speeds up convolutions; the ViT has one).
VIT_RECIPE = Recipe(max_lr=3e-3, channels_last=False, model=ViTConfig())


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """Adam with the recipe's rate, betas and weight decay."""
    return torch.optim.Adam(model.parameters(), lr=recipe.max_lr, betas=recipe.betas, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int, total_steps: int | None = None):
    """One-cycle rate over `recipe.epochs` epochs (or `total_steps`), stepped per batch; beta1 moves against it."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.max_lr, total_steps=total_steps or recipe.epochs * steps_per_epoch,
        cycle_momentum=True, base_momentum=recipe.min_beta1, max_momentum=recipe.betas[0])


@dataclass
class TrainingRun:
    """A finished training run: the trained model (the average, with one), its history, optimizer, schedule, average."""

    model: nn.Module
    history: History
    optimizer: torch.optim.Optimizer | None = None
    scheduler: LRScheduler | None = None
    average: WeightAverage | None = None

    @property
    def train_seconds(self) -> float:
        """Seconds spent training (evaluation excluded), over every epoch, resumed ones included."""
        return sum(self.history.epoch_seconds)


def train_course_model(
    recipe: Recipe | None = None, *, device: torch.device | str | None = None, out: str | Path | None = None,
    epochs: int | None = None, resume: bool = False, data: MnistSplits | None = None, progress: bool = True,
    on_epoch_end: Callable[[int, History], None] | None = None
) -> TrainingRun:
    """Train the recipe's model on `data` (MNIST when `None`); with `out`, save `out/checkpoint.pt` after each epoch.

    `epochs` stops early (the schedule spans `recipe.epochs`); `resume` continues that checkpoint as one unbroken run.
    """
    recipe = recipe or Recipe()
    device = pick_device(device)
    seed_everything(recipe.seed)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    augment = (random_affine(recipe.max_shift, recipe.max_degrees, recipe.max_scale) if recipe.max_degrees or recipe.max_scale
               else random_shift(recipe.max_shift) if recipe.max_shift > 0 else None)
    train_loader, test_loader = make_loaders(recipe.batch_size, data=data, seed=recipe.seed, device=device, augment=augment,
                                             fraction=recipe.epoch_fraction)
    model = build_model(recipe.model).to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(train_loader))
    checkpoint_path = Path(out) / "checkpoint.pt" if out is not None else None
    average = WeightAverage(model, recipe.weight_average) if recipe.weight_average else None
    run = TrainingRun(average.model if average else model, History(), optimizer, scheduler, average)
    if resume:
        _, checkpoint = load_checkpoint(checkpoint_path, run.model, optimizer=optimizer, scheduler=scheduler)
        if checkpoint.extra.get("recipe", recipe.to_dict()) != recipe.to_dict():
            raise CheckpointError(f"{checkpoint_path}: was written by another recipe ({checkpoint.extra['recipe']}); "
                                  "resume with the same settings, or train from scratch into another folder.")
        try:
            run.history = History(**checkpoint.history)
        except TypeError:
            raise CheckpointError(f"{checkpoint_path}: its history ({', '.join(checkpoint.history)}) is not a training "
                                  "history; train from scratch into another folder.") from None
        try:
            if "rng_state" in checkpoint.extra:  # dropout draws the random numbers the unbroken run would have drawn
                torch.set_rng_state(checkpoint.extra["rng_state"])
            if "cuda_rng_state" in checkpoint.extra and device.type == "cuda":
                torch.cuda.set_rng_state(checkpoint.extra["cuda_rng_state"], device)
            if average is not None:  # the checkpoint's model is the average; the trained weights ride along
                model.load_state_dict(checkpoint.extra["trained_state"])
                average.steps = int(checkpoint.extra["average_steps"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{checkpoint_path}: cannot resume: the trained weights behind its average or its random "
                                  f"state are missing or damaged ({type(error).__name__}: {str(error).splitlines()[0]}); "
                                  "train from scratch into another folder.") from None

    def save(epoch: int, history: History) -> None:
        if checkpoint_path is not None:
            save_course_checkpoint(run, recipe, checkpoint_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    fit(model, train_loader, test_loader, epochs=max((epochs or recipe.epochs) - run.history.epochs, 0),
        optimizer=optimizer, scheduler=scheduler, device=device, memory_format=memory_format,
        start_epoch=run.history.epochs, history=run.history, progress=progress, on_epoch_end=save,
        label_smoothing=recipe.label_smoothing, average=average)
    run.model.to(memory_format=torch.contiguous_format)
    return run


def write_metrics(path: str | Path, run: TrainingRun, recipe: Recipe) -> dict:
    """Write `metrics.json` for a finished run: accuracy, loss, epochs, training seconds, seed, recipe, versions."""
    metrics = {
        "test_accuracy": run.history.test_accuracy[-1],
        "test_loss": run.history.test_loss[-1],
        "epochs": run.history.epochs,
        "train_seconds": round(run.train_seconds, 2),
        "seed": recipe.seed,
        "recipe": recipe.to_dict(),
        "history": asdict(run.history),
        "versions": library_versions(),
    }
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8"))
    return metrics


def course_checkpoint_path() -> Path:
    """Where notebooks keep the trained course model: `artifacts/mnist_cnn.pt`."""
    return artifacts_dir() / "mnist_cnn.pt"


def save_course_checkpoint(run: TrainingRun, recipe: Recipe | None = None, path: str | Path | None = None) -> Path:
    """Save a course run to `artifacts/mnist_cnn.pt`, where later notebooks load it (or to `path`).

    The random state rides along to resume from (dropout draws from it); with a weight average, the average is the
    checkpoint's model and the trained weights ride along too.
    """
    extra = {"recipe": (recipe or Recipe()).to_dict(), "rng_state": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # dropout on a GPU draws from the GPU's generator
        extra["cuda_rng_state"] = torch.cuda.get_rng_state()
    if run.average is not None:
        extra |= {"trained_state": {key: value.detach().cpu() for key, value in run.average.source.state_dict().items()},
                  "average_steps": run.average.steps}
    return save_checkpoint(path or course_checkpoint_path(), run.model, epoch=run.history.epochs, history=run.history,
                           optimizer=run.optimizer, scheduler=run.scheduler, extra=extra)


def load_or_train_course_model(*, device: torch.device | str | None = None,
                               progress: bool = True) -> tuple[nn.Module, Checkpoint]:
    """Load the trained course model from `artifacts/`, training it with the course recipe when missing."""
    path = course_checkpoint_path()
    if not path.exists():
        save_course_checkpoint(train_course_model(device=device, progress=progress), Recipe(), path)
    model, checkpoint = load_checkpoint(path)
    return model.to(pick_device(device)).eval(), checkpoint
