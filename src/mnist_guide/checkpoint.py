"""The checkpoint format: weights, the model's config, optimizer state, epoch and versions, written atomically.

Read with `weights_only=True` after the zip CRCs are checked: a damaged or foreign file is refused in one line.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mnist_guide.models import build_model, model_config
from mnist_guide.runtime import atomic_write, library_versions


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, damaged, or holds another model than the one it is loaded into."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds: weights, the model's config, optimizer state, epoch, history, versions."""

    model_state: dict
    model_config: dict
    epoch: int
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    history: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def check_zip(path: str | Path, error: type[Exception] = CheckpointError) -> None:
    """Raise `error` unless `path` is a zip archive whose members pass their CRC check (torch's loaders skip it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as failure:
        raise error(f"{path}: not a readable archive ({failure}); the file is damaged or of another kind.") from None
    if bad is not None:
        raise error(f"{path}: damaged (member {bad} fails its CRC check); write the file again.")


def save_checkpoint(
    path: str | Path, model: nn.Module, *, epoch: int, optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, history: object | None = None,
    extra: dict | None = None
) -> Path:
    """Write a checkpoint atomically: weights, config, optimizer and scheduler state, epoch, `history`, versions."""
    checkpoint = Checkpoint(
        model_state={key: value.detach().cpu() for key, value in model.state_dict().items()},
        model_config=model_config(model),
        epoch=epoch,
        optimizer_state=optimizer.state_dict() if optimizer is not None else None,
        scheduler_state=scheduler.state_dict() if scheduler is not None else None,
        history=asdict(history) if history is not None else {},
        versions=library_versions(),
        extra=dict(extra or {}),
    )
    return atomic_write(path, lambda temporary: torch.save(asdict(checkpoint), temporary))


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (CRCs checked, `weights_only=True`); a damaged or foreign file raises `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint. Train one with `mnist-guide train --out {path.parent}`.")
    check_zip(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a bad file
        first = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {first}).") from None
    if not isinstance(raw, dict) or not {"model_state", "model_config", "epoch"} <= raw.keys():
        raise CheckpointError(f"{path}: not an mnist-guide checkpoint (no model_state / model_config / epoch).")
    return Checkpoint(**{key: raw[key] for key in Checkpoint.__dataclass_fields__ if key in raw})


def load_checkpoint(
    path: str | Path, model: nn.Module | None = None, *, optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
) -> tuple[nn.Module, Checkpoint]:
    """Load a checkpoint into `model` (built from its config when `None`) and the given optimizer and scheduler."""
    checkpoint = read_checkpoint(path)
    stored = checkpoint.model_config
    if model is None:
        try:
            model = build_model(stored)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: holds a {stored.get('class', 'model')} this course cannot build "
                                  f"(config {stored}: {error}).") from None
    elif (given := model_config(model)) != stored:
        raise CheckpointError(
            f"{path}: holds a {stored.get('class')} with config {stored}, but the model given is a {given['class']} with "
            f"config {given}. Build the model from the checkpoint (load_checkpoint(path)) or load a checkpoint of this model.")
    for name, wanted, state in (("optimizer", optimizer, checkpoint.optimizer_state),
                                ("scheduler", scheduler, checkpoint.scheduler_state)):
        if wanted is not None and state is None:
            raise CheckpointError(f"{path}: holds no {name} state to resume from.")
    try:
        model.load_state_dict(checkpoint.model_state)
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint.scheduler_state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: does not fit ({type(error).__name__}: {str(error).splitlines()[0]}).") from None
    if not all(torch.isfinite(value).all() for value in checkpoint.model_state.values() if value.is_floating_point()):
        raise CheckpointError(f"{path}: holds weights that are not finite (NaN or infinity); train it again.")
    return model, checkpoint
