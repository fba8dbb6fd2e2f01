"""Shared test set-up: no network for tests or notebook kernels, a scratch copy of MNIST."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import network_guard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "MNIST" / "raw"


def pytest_configure(config: pytest.Config) -> None:
    # Kernels started by nbval inherit IPYTHONDIR, whose start-up file blocks the network there too.
    ipython_dir = Path(tempfile.mkdtemp(prefix="mnist-guide-ipython-"))
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    guard = Path(__file__).with_name("network_guard.py")
    (startup / "00-block-network.py").write_text(
        f"import runpy as _runpy\n_runpy.run_path({str(guard)!r}, run_name='network_guard_startup')\ndel _runpy\n"
    )
    os.environ["IPYTHONDIR"] = str(ipython_dir)
    config._mnist_guide_ipython_dir = ipython_dir  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_mnist_guide_ipython_dir", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def block_network():
    """Every test runs offline: connections to anything but loopback raise."""
    network_guard.install()
    yield
    network_guard.uninstall()


@pytest.fixture
def mnist_copy(tmp_path: Path) -> Path:
    """A scratch copy of `data/` (the four .gz files) that a test may damage."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in RAW.glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    return tmp_path / "data"


@pytest.fixture
def free_port() -> int:
    from mnist_guide.runtime import free_port

    return free_port()


@pytest.fixture(scope="session")
def course_checkpoint() -> Path:
    """The trained course model, `artifacts/mnist_cnn.pt`, trained once (about 30 s) when missing.

    Notebooks 07 onwards load the same file, so a test run trains the model at most once.
    """
    from mnist_guide.training import course_checkpoint_path, load_or_train_course_model

    network_guard.install()
    try:
        load_or_train_course_model(progress=False)
    finally:
        network_guard.uninstall()
    return course_checkpoint_path()


@pytest.fixture(scope="session")
def exported_files(course_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The course model as TorchScript (`.pt`) and as a `torch.export` program (`.pt2`), each written by `mnist-guide export`."""
    from mnist_guide import cli

    folder = tmp_path_factory.mktemp("exported")
    files = {"torchscript": folder / "mnist_cnn.pt", "export": folder / "mnist_cnn.pt2"}
    for format, out in files.items():
        assert cli.main(["export", "--checkpoint", str(course_checkpoint), "--format", format, "--out", str(out)]) == 0
    return files


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium for the browser tests: skipped without it, except under CI=true, where it must be there."""
    path = Path("/usr/bin/chromium")
    if path.exists():
        return path
    message = "Chromium not found at /usr/bin/chromium: install it with `sudo apt-get install chromium` (Debian/Ubuntu)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " — CI must install it (.ci/run does).")
    pytest.skip(message)
