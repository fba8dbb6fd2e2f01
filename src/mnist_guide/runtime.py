"""Device choice, seeding, where the course keeps its files, and the environment report."""

from __future__ import annotations

import argparse
import os
import platform
import random
from pathlib import Path

import torch

_PROJECT_MARKERS = ("pyproject.toml", "data")


class DeviceUnavailableError(RuntimeError):
    """A device was asked for by name but this machine does not have it."""


def find_project_root(start: str | Path | None = None) -> Path:
    """Return the course's top folder (the one holding `pyproject.toml` and `data/`).

    Notebooks run with their own folder as the working directory, so paths such as `data/`
    are resolved from here rather than from wherever Python was started.
    Set `MNIST_GUIDE_ROOT` to point somewhere else.

    Taught in notebooks/00_start_here.ipynb.
    """
    env = os.environ.get("MNIST_GUIDE_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    candidates = []
    here = Path(start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    package_dir = Path(__file__).resolve().parent
    candidates += list(package_dir.parents)
    for folder in candidates:
        if all((folder / marker).exists() for marker in _PROJECT_MARKERS) and (folder / "src" / "mnist_guide").is_dir():
            return folder
    # Installed without a checkout: fall back to the working directory.
    return here


def data_dir() -> Path:
    """Return the folder MNIST is read from (`<project>/data`, or `MNIST_GUIDE_DATA`).

    Taught in notebooks/00_start_here.ipynb.
    """
    env = os.environ.get("MNIST_GUIDE_DATA")
    return Path(env).expanduser().resolve() if env else find_project_root() / "data"


def artifacts_dir(create: bool = True) -> Path:
    """Return the folder for checkpoints and exported models (`<project>/artifacts`, or `MNIST_GUIDE_ARTIFACTS`).

    Taught in notebooks/00_start_here.ipynb.
    """
    env = os.environ.get("MNIST_GUIDE_ARTIFACTS")
    folder = Path(env).expanduser().resolve() if env else find_project_root() / "artifacts"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """Pick the device to compute on: `prefer` if given and available, else CUDA, then MPS, then CPU.

    Works on torch versions with and without `torch.accelerator`. `MNIST_GUIDE_DEVICE=cpu`
    forces a choice from outside (CI uses it to compare devices).

    Taught in notebooks/00_start_here.ipynb.
    """
    prefer = prefer if prefer is not None else os.environ.get("MNIST_GUIDE_DEVICE") or None
    if prefer is not None:
        device = torch.device(prefer)
        available = {
            "cpu": True,
            "cuda": torch.cuda.is_available(),
            "mps": _mps_available(),
        }.get(device.type, False)
        if not available:
            raise DeviceUnavailableError(
                f"device {device} was asked for but is not available here; "
                "ask for another (cpu always works) or none, to use the best available one"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy (when installed) and torch on every device; returns a seeded CPU generator.

    The same seed on the same machine gives the same run.

    Taught in notebooks/00_start_here.ipynb.
    """
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch's wheels
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError:
        return "not installed"
    return getattr(module, "__version__", "unknown")


def describe_environment(device: torch.device | str | None = None) -> dict[str, str]:
    """Collect the versions, device and thread count that decide how the course runs.

    Taught in notebooks/00_start_here.ipynb.
    """
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        device_name = "Apple GPU (MPS)"
    else:
        device_name = _cpu_name()
    from mnist_guide import __version__

    return {
        "mnist_guide": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "torchmetrics": _version("torchmetrics"),
        "device": str(device),
        "device_name": device_name,
        "cuda_available": str(torch.cuda.is_available()),
        "torch_threads": str(torch.get_num_threads()),
        "cpu_count": str(os.cpu_count()),
        "platform": platform.platform(terse=True),
    }


def format_environment(info: dict[str, str]) -> str:
    """Render `describe_environment()` as a two-column text table.

    Taught in notebooks/00_start_here.ipynb.
    """
    width = max(len(key) for key in info)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in info.items())


def positive_int(text: str) -> int:
    """An argparse type for counts (epochs, batch sizes): a whole number of at least 1.

    Taught in notebooks/06_mnist_cnn.ipynb (`mnist-guide train --epochs`).
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
