import random

import pytest
import torch

from mnist_guide import runtime


def test_pick_device_prefers_an_available_accelerator_else_cpu():
    device = runtime.pick_device()
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device.type in ("mps", "cpu")


def test_pick_device_honours_an_explicit_cpu():
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_pick_device_refuses_an_unavailable_or_unknown_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(runtime.DeviceUnavailableError, match="not available"):
        runtime.pick_device("cuda")
    with pytest.raises(runtime.DeviceUnavailableError, match="not a device name"):
        runtime.pick_device("banana")


def test_pick_device_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MNIST_GUIDE_DEVICE", "cpu")
    assert runtime.pick_device() == torch.device("cpu")


def test_seed_everything_repeats_python_and_torch_draws():
    runtime.seed_everything(123)
    first = (random.random(), torch.rand(3))
    runtime.seed_everything(123)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0]
    assert torch.equal(first[1], second[1])


def test_seed_everything_returns_a_seeded_generator():
    a = runtime.seed_everything(5)
    b = runtime.seed_everything(5)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))


def test_describe_environment_reports_versions_device_and_threads():
    info = runtime.describe_environment("cpu")
    assert info["torch"] == torch.__version__
    assert info["device"] == "cpu"
    assert int(info["torch_threads"]) == torch.get_num_threads()
    for key in ("python", "torchvision", "torchmetrics", "mnist_guide"):
        assert info[key] and info[key] != "not installed"
    table = runtime.format_environment(info)
    assert len(table.splitlines()) == len(info)
    assert all(line.split()[0] in info for line in table.splitlines())


def test_project_folders_are_found_from_anywhere(tmp_path, monkeypatch):
    expected = runtime.find_project_root()
    assert (expected / "pyproject.toml").is_file()
    monkeypatch.chdir(tmp_path)
    assert runtime.find_project_root() == expected
    assert runtime.data_dir() == expected / "data"


def test_environment_variables_move_data_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_GUIDE_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("MNIST_GUIDE_ARTIFACTS", str(tmp_path / "a"))
    assert runtime.data_dir() == tmp_path / "d"
    assert runtime.artifacts_dir() == tmp_path / "a"
    assert (tmp_path / "a").is_dir()


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    runtime.atomic_write(target, lambda temporary: temporary.write_bytes(b"first"))
    assert target.read_bytes() == b"first" and target.stat().st_mode & 0o777 == 0o644

    def fails(temporary):
        temporary.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        runtime.atomic_write(target, fails)
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]

