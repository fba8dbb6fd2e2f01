"""One epoch, evaluation, `fit()` with its history, checkpoints, and the course's training recipe."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnist_guide.data import MNIST_MEAN, MNIST_STD, make_loaders
from mnist_guide.models import BUILDABLE, CNNConfig, ViTConfig, build_model, model_config
from mnist_guide.runtime import artifacts_dir, pick_device, seed_everything

COURSE_CHECKPOINT = "mnist_cnn.pt"


@dataclass
class History:
    """Per-epoch figures of a training run: losses, accuracies, seconds and learning rate.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.test_accuracy)

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> History:
        return cls(**{key: list(values.get(key, [])) for key in cls.__dataclass_fields__})


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str = "cpu",
    loss_fn: Callable = F.cross_entropy,
    memory_format: torch.memory_format = torch.contiguous_format,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[float, float]:
    """Run one pass over `loader`, stepping the optimizer (and a per-batch scheduler) each batch.

    Returns the mean training loss and accuracy over the samples seen.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    model.train()
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    batches = progress(loader) if progress is not None else loader
    for images, labels in batches:
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.detach() * len(labels)
        total_correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen += len(labels)
    return total_loss.item() / seen, total_correct.item() / seen


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str = "cpu",
    loss_fn: Callable = F.cross_entropy,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """Return the mean loss and the accuracy of `model` over every sample in `loader`.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        total_loss += loss_fn(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    return total_loss / seen, correct / seen


def fit(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_step: str = "batch",
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    start_epoch: int = 0,
    history: History | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, History], None] | None = None,
) -> History:
    """Train `model` for `epochs`, evaluating after each; returns the loss and accuracy history.

    `scheduler_step` says whether the scheduler steps after every batch (one-cycle) or every
    epoch (step decay). `start_epoch` and `history` continue a run restored from a checkpoint;
    a loader with `set_epoch` gets the epoch number, so its shuffle matches an unbroken run.
    `on_epoch_end(epoch, history)` runs after each epoch (to save a checkpoint, say).

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    if scheduler_step not in ("batch", "epoch"):
        raise ValueError(f"scheduler_step must be 'batch' or 'epoch', got {scheduler_step!r}")
    from tqdm.auto import tqdm

    history = history if history is not None else History()
    for epoch in range(start_epoch, start_epoch + epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        learning_rate = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        bar = partial(tqdm, desc=f"epoch {epoch + 1}", leave=True) if progress else None
        train_loss, train_accuracy = train_one_epoch(
            model, train_loader, optimizer,
            scheduler=scheduler if scheduler_step == "batch" else None,
            device=device, memory_format=memory_format, progress=bar,
        )
        if scheduler is not None and scheduler_step == "epoch":
            scheduler.step()
        seconds = time.perf_counter() - started
        test_loss, test_accuracy = evaluate(model, test_loader, device=device, memory_format=memory_format)
        history.train_loss.append(train_loss)
        history.train_accuracy.append(train_accuracy)
        history.test_loss.append(test_loss)
        history.test_accuracy.append(test_accuracy)
        history.epoch_seconds.append(seconds)
        history.learning_rate.append(learning_rate)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history


# --------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, or holds another model than the one it is loaded into."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds: weights, the model's config, optimizer state, epoch, versions.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """

    model_state: dict
    model_config: dict
    epoch: int
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    history: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    """Return the versions that wrote a checkpoint or a metrics file.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    import platform

    import torchvision

    from mnist_guide import __version__

    return {
        "mnist_guide": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def atomic_save(obj: object, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, then rename it into place.

    A crash mid-write leaves the previous file intact instead of a truncated one.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(obj, handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it into place.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False, encoding="utf-8"
    )
    try:
        with handle:
            handle.write(text)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    history: History | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically: weights, config, optimizer and scheduler state, epoch, versions.

    Everything stored is plain data, so `torch.load(..., weights_only=True)` reads it.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = Checkpoint(
        model_state=state,
        model_config=model_config(model),
        epoch=epoch,
        optimizer_state=optimizer.state_dict() if optimizer is not None else None,
        scheduler_state=scheduler.state_dict() if scheduler is not None else None,
        history=history.to_dict() if history is not None else {},
        versions=library_versions(),
        extra=dict(extra or {}),
    )
    return atomic_save(asdict(checkpoint), path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint file with `weights_only=True`; a damaged or foreign file raises `CheckpointError`.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint. Train one with `mnist-guide train --out {path.parent}`.")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a bad file
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "The file may be truncated or corrupt: train it again."
        ) from error
    if not isinstance(raw, dict) or not {"model_state", "model_config", "epoch"} <= raw.keys():
        raise CheckpointError(f"{path}: not an mnist-guide checkpoint (no model_state / model_config / epoch).")
    known = {key: raw[key] for key in Checkpoint.__dataclass_fields__ if key in raw}
    return Checkpoint(**known)


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, Checkpoint]:
    """Load a checkpoint into `model` (built from the stored config when `None`); returns both.

    Loading into a model of another class or shape raises `CheckpointError` that says which.
    The optimizer and scheduler, when given, get their saved state back, to resume training.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    checkpoint = read_checkpoint(path, map_location=map_location)
    stored = dict(checkpoint.model_config)
    stored_class = stored.pop("class", "MnistCNN")
    if model is None:
        if stored_class not in BUILDABLE:
            raise CheckpointError(f"{path}: holds a {stored_class}; pass a model of that class to load it.")
        try:
            model = build_model({"class": stored_class, **stored})
        except TypeError as error:
            config_name = BUILDABLE[stored_class][1].__name__
            raise CheckpointError(f"{path}: model config {stored} is not a {config_name} ({error}).") from error
    else:
        wanted = model_config(model)
        if wanted != checkpoint.model_config:
            raise CheckpointError(
                f"{path}: holds a {stored_class} with config {stored}, but the model given is a "
                f"{wanted.pop('class')} with config {wanted}. Build the model from the checkpoint "
                "(load_checkpoint(path)) or load a checkpoint of this model."
            )
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model: {str(error).splitlines()[0]}") from error
    if optimizer is not None:
        if checkpoint.optimizer_state is None:
            raise CheckpointError(f"{path}: holds no optimizer state to resume from.")
        optimizer.load_state_dict(checkpoint.optimizer_state)
    if scheduler is not None:
        if checkpoint.scheduler_state is None:
            raise CheckpointError(f"{path}: holds no scheduler state to resume from.")
        scheduler.load_state_dict(checkpoint.scheduler_state)
    return model, checkpoint


# --------------------------------------------------------------------------------------------
# The course recipe


@dataclass(frozen=True)
class Recipe:
    """The course's training recipe: model shape, optimiser, schedule, batch size, augmentation.

    Adam with a one-cycle learning rate, BatchNorm, batch 256, data held as tensors, and
    random shifts of up to `max_shift` pixels: 99.4 % on the test set in a few CPU epochs.
    The schedule cycles Adam's beta1 between `betas[0]` and `min_beta1`, against the rate.

    Taught in notebooks/06_mnist_cnn.ipynb.
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


#: The recipe for the ViT: the course recipe with a gentler peak learning rate and more epochs,
#: and without channels_last (it speeds up convolutions; the ViT has one, on one channel).
#: Taught in notebooks/12_transformers.ipynb.
VIT_RECIPE = Recipe(epochs=5, max_lr=3e-3, channels_last=False, model=ViTConfig())


def random_shift(max_shift: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Return an augmentation moving each image by up to `max_shift` pixels in x and y.

    The border is filled with the normalised value of a black pixel.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    background = (0.0 - MNIST_MEAN) / MNIST_STD

    def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        padded = F.pad(images, (max_shift,) * 4, value=background)
        dy = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
        dx = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
        rows = torch.arange(height).view(1, height, 1) + dy
        cols = torch.arange(width).view(1, 1, width) + dx
        return padded[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)

    return shift


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """Adam with the recipe's betas (beta2 0.9: a short memory of the gradients' scale).

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    return torch.optim.Adam(model.parameters(), lr=recipe.max_lr, betas=recipe.betas, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """One-cycle learning rate over the whole run, stepped after every batch.

    The rate climbs to `max_lr` over the first 30 % of the steps, then anneals to almost zero,
    while Adam's beta1 (its momentum) moves the other way, from `betas[0]` down to `min_beta1`
    and back: OneCycleLR sets beta1 itself, overriding the optimizer's.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.max_lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch,
        cycle_momentum=True, base_momentum=recipe.min_beta1, max_momentum=recipe.betas[0],
    )


@dataclass
class TrainingRun:
    """What `train_course_model` returns: the trained model, its history and the wall time."""

    model: nn.Module
    history: History
    train_seconds: float
    checkpoint_path: Path | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


def train_course_model(
    recipe: Recipe | None = None,
    *,
    device: torch.device | str | None = None,
    out: str | Path | None = None,
    epochs: int | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, History], None] | None = None,
) -> TrainingRun:
    """Train the recipe's model (the course CNN, or the ViT of `VIT_RECIPE`); with `out`, save `out/checkpoint.pt` after every epoch.

    `epochs` stops early (the schedule still spans `recipe.epochs`), and `resume=True`
    continues from `out/checkpoint.pt`: together they give the same weights as one unbroken run.
    `on_epoch_end(epoch, history)` runs after each epoch's checkpoint is saved.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    recipe = recipe or Recipe()
    device = pick_device(device)
    seed_everything(recipe.seed)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    augment = random_shift(recipe.max_shift) if recipe.max_shift > 0 else None
    train_loader, test_loader = make_loaders(
        recipe.batch_size, seed=recipe.seed, device=device, augment=augment
    )
    model = build_model(recipe.model).to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(train_loader))
    checkpoint_path = Path(out) / "checkpoint.pt" if out is not None else None
    start_epoch, history = 0, History()
    if resume:
        if checkpoint_path is None:
            raise ValueError("resume=True needs `out`, the folder holding checkpoint.pt")
        _, checkpoint = load_checkpoint(checkpoint_path, model, optimizer=optimizer, scheduler=scheduler)
        stored_recipe = checkpoint.extra.get("recipe")
        if stored_recipe is not None and stored_recipe != recipe_to_dict(recipe):
            raise CheckpointError(
                f"{checkpoint_path}: was written by another recipe ({_recipe_difference(stored_recipe, recipe)}); "
                "resume with the same settings, or train from scratch into another folder."
            )
        start_epoch, history = checkpoint.epoch, History.from_dict(checkpoint.history)
    remaining = (epochs if epochs is not None else recipe.epochs) - start_epoch

    def save(epoch: int, history: History) -> None:
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path, model, epoch=epoch + 1, optimizer=optimizer, scheduler=scheduler,
                history=history, extra={"recipe": recipe_to_dict(recipe)},
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    started = time.perf_counter()
    history = fit(
        model, train_loader, test_loader, epochs=max(remaining, 0), optimizer=optimizer,
        scheduler=scheduler, device=device, memory_format=memory_format, start_epoch=start_epoch,
        history=history, progress=progress, on_epoch_end=save,
    )
    return TrainingRun(
        model.to(memory_format=torch.contiguous_format), history, time.perf_counter() - started,
        checkpoint_path, optimizer, scheduler,
    )


def _recipe_difference(stored: dict, recipe: Recipe) -> str:
    """Name the settings in which a stored recipe differs from `recipe`, for error messages."""
    current = recipe_to_dict(recipe)
    keys = sorted(set(stored) | set(current))
    return ", ".join(f"{key} {stored.get(key)!r} there, {current.get(key)!r} here" for key in keys
                     if stored.get(key) != current.get(key))


def recipe_to_dict(recipe: Recipe) -> dict:
    """Return the recipe as plain data (for checkpoints and metrics.json).

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    values = asdict(recipe)
    values["betas"] = list(recipe.betas)
    return values


def write_metrics(path: str | Path, run: TrainingRun, recipe: Recipe) -> dict:
    """Write `metrics.json` for a finished run (accuracy, loss, epochs, seconds, seed, versions).

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    metrics = {
        "test_accuracy": run.history.test_accuracy[-1] if run.history.epochs else None,
        "test_loss": run.history.test_loss[-1] if run.history.epochs else None,
        "epochs": run.history.epochs,
        "train_seconds": round(run.train_seconds, 2),
        "seed": recipe.seed,
        "recipe": recipe_to_dict(recipe),
        "history": run.history.to_dict(),
        "versions": library_versions(),
    }
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", path)
    return metrics


def course_checkpoint_path() -> Path:
    """Where notebooks keep the trained course model: `artifacts/mnist_cnn.pt`.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    return artifacts_dir() / COURSE_CHECKPOINT


def save_course_checkpoint(run: TrainingRun, recipe: Recipe | None = None, path: str | Path | None = None) -> Path:
    """Save a finished course run atomically to `artifacts/mnist_cnn.pt`, where later notebooks load it.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    recipe = recipe or Recipe()
    path = Path(path) if path is not None else course_checkpoint_path()
    return save_checkpoint(
        path, run.model, epoch=run.history.epochs, optimizer=run.optimizer, scheduler=run.scheduler,
        history=run.history,
        extra={"recipe": recipe_to_dict(recipe), "train_seconds": round(run.train_seconds, 2)},
    )


def load_or_train_course_model(
    path: str | Path | None = None, *, device: torch.device | str | None = None, progress: bool = True
) -> tuple[nn.Module, Checkpoint]:
    """Load the trained course model from `artifacts/`, training it with the course recipe when missing.

    This is how every notebook after 06 stands on its own.

    Taught in notebooks/07_evaluation.ipynb.
    """
    path = Path(path) if path is not None else course_checkpoint_path()
    if not path.exists():
        run = train_course_model(device=device, progress=progress)
        save_course_checkpoint(run, Recipe(), path)
    model, checkpoint = load_checkpoint(path)
    return model.to(pick_device(device)).eval(), checkpoint
