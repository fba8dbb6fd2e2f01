"""Device choice, seeding, where the course keeps its files, the environment report, and safe writes."""

from __future__ import annotations

import os
import platform
import random
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


class DeviceUnavailableError(RuntimeError):
    """A device was asked for by name but this machine does not have it."""


def find_project_root() -> Path:
    """The course's top folder (holding `pyproject.toml`, `data/` and `src/mnist_guide`), or `MNIST_GUIDE_ROOT`."""
    env = os.environ.get("MNIST_GUIDE_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in [here, *here.parents, *Path(__file__).resolve().parent.parents]:
        if (folder / "pyproject.toml").exists() and (folder / "data").exists() and (folder / "src" / "mnist_guide").is_dir():
            return folder
    return here  # installed without a checkout


def data_dir() -> Path:
    """The folder MNIST is read from: `<project>/data`, or `MNIST_GUIDE_DATA`."""
    env = os.environ.get("MNIST_GUIDE_DATA")
    return Path(env).expanduser().resolve() if env else find_project_root() / "data"


def artifacts_dir(create: bool = True) -> Path:
    """The folder for checkpoints and exported models: `<project>/artifacts`, or `MNIST_GUIDE_ARTIFACTS`."""
    env = os.environ.get("MNIST_GUIDE_ARTIFACTS")
    folder = Path(env).expanduser().resolve() if env else find_project_root() / "artifacts"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return device.type == "cpu" or (device.type == "mps" and torch.backends.mps.is_available())


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device `prefer` (or else `MNIST_GUIDE_DEVICE`) names, refused if absent; else CUDA, then MPS, then the CPU."""
    prefer = prefer if prefer is not None else os.environ.get("MNIST_GUIDE_DEVICE") or None
    if prefer is None:
        return next(d for d in map(torch.device, ("cuda", "mps", "cpu")) if _available(d))
    try:
        device = torch.device(prefer)
    except RuntimeError:
        raise DeviceUnavailableError(f"{prefer!r} is not a device name: use cpu, cuda, cuda:N or mps") from None
    if not _available(device):
        raise DeviceUnavailableError(f"device {device} was asked for but is not available here; ask for cpu, or none for the best one")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's `random`, NumPy and torch (every device); returns a seeded CPU generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too
    return torch.Generator().manual_seed(seed)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """The versions of Python and the libraries that decide how the course runs (stored in checkpoints too)."""
    import torchmetrics
    import torchvision

    from mnist_guide import __version__

    return {"mnist_guide": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "torchmetrics": str(torchmetrics.__version__)}


def describe_environment(device: torch.device | str | None = None) -> dict[str, str]:
    """The versions, device and thread count that decide how the course runs."""
    device = pick_device(device)
    names = {"cuda": lambda: torch.cuda.get_device_name(device), "mps": lambda: "Apple GPU (MPS)"}
    return {
        **library_versions(),
        "device": str(device),
        "device_name": names.get(device.type, _cpu_name)(),
        "cuda_available": str(torch.cuda.is_available()),
        "torch_threads": str(torch.get_num_threads()),
        "cpu_count": str(os.cpu_count()),
        "platform": platform.platform(terse=True),
    }


def format_environment(info: dict[str, str]) -> str:
    """Render `describe_environment()` as a two-column table."""
    width = max(len(key) for key in info)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in info.items())


def atomic_write(path: str | Path, write: Callable[[Path], object], mode: int = 0o644) -> Path:
    """Call `write(temporary)` on a file beside `path`, then rename it into place with `mode`.

    A crash or a full disk mid-write leaves the old file intact and no temporary behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now at `host` (for a server or torchrun's rendezvous)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
