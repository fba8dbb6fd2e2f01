import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from small_runs import cli_on_mnist_slice

from mnist_guide import __version__, cli
from mnist_guide.checkpoint import load_checkpoint
from mnist_guide.training import FAST_RECIPE, RECORD_RECIPE, Recipe

# -- version and info -------------------------------------------------------------------------


def test_the_console_script_reports_its_version():
    result = subprocess.run(["mnist-guide", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"mnist-guide {__version__}"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "mnist_guide.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and __version__ in result.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "train" in capsys.readouterr().out


def test_info_prints_versions_device_and_folders(capsys):
    assert cli.main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "device", "torch_threads", "data_dir", "artifacts_dir"):
        assert key in out


def test_info_json_is_machine_readable(capsys):
    assert cli.main(["info", "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] == "cpu" and info["mnist_guide"] == __version__


def test_int_range_accepts_its_range_and_says_what_is_wrong():
    import argparse

    seed = cli.int_range(0, 10)
    assert seed("10") == 10
    for text, message in (("11", "outside 0..10"), ("-1", "outside"), ("ten", "not a whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            seed(text)


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fly"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# -- train ------------------------------------------------------------------------------------


def test_train_writes_a_checkpoint_and_metrics(monkeypatch, tmp_path, capsys):
    cli_on_mnist_slice(monkeypatch)
    assert cli.main(["train", "--epochs", "1", "--seed", "3", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "test accuracy" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"test_accuracy", "test_loss", "epochs", "train_seconds", "seed", "versions"} <= metrics.keys()
    assert metrics["epochs"] == 1 and metrics["seed"] == 3 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["versions"]["mnist_guide"] == __version__
    model, checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint.epoch == 1 and checkpoint.optimizer_state is not None
    assert checkpoint.history["test_accuracy"] == [metrics["test_accuracy"]]


@pytest.mark.parametrize(("flags", "recipe"), [([], RECORD_RECIPE), (["--recipe", "course"], Recipe()),
                                              (["--recipe", "fast"], FAST_RECIPE)], ids=["record", "course", "fast"])
def test_train_uses_the_record_recipe_unless_told(flags, recipe, monkeypatch, tmp_path):
    cli_on_mnist_slice(monkeypatch)
    assert cli.main(["train", *flags, "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"] == replace(recipe, epochs=1).to_dict()


def test_train_resume_continues_where_it_stopped(monkeypatch, tmp_path, capsys):
    cli_on_mnist_slice(monkeypatch)
    assert cli.main(["train", "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert cli.main(["train", "--epochs", "1", "--resume", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 1
    assert cli.main(["train", "--epochs", "2", "--resume", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "another recipe" in capsys.readouterr().err


def test_train_never_replaces_a_run_without_being_told(monkeypatch, tmp_path, capsys):
    cli_on_mnist_slice(monkeypatch)
    assert cli.main(["train", "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    assert cli.main(["train", "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err and (tmp_path / "checkpoint.pt").read_bytes() == before
    assert cli.main(["train", "--epochs", "1", "--seed", "1", "--force", "--quiet", "--device", "cpu",
                     "--out", str(tmp_path)]) == 0
    assert (tmp_path / "checkpoint.pt").read_bytes() != before


def test_train_checks_the_output_folder_before_training(monkeypatch, tmp_path, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr("mnist_guide.training.train_course_model", no_training)
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert cli.main(["train", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_train_refuses_a_read_only_folder_before_training(tmp_path, capsys):
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    assert cli.main(["train", "--out", str(read_only / "run")]) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("epochs", ["0", "-1", "two"])
def test_train_rejects_a_bad_epoch_count(epochs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--epochs", epochs, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--epochs" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_train_needs_an_output_folder(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train"])
    assert "--out" in capsys.readouterr().err


def test_resume_without_a_checkpoint_says_what_to_do(monkeypatch, tmp_path, capsys):
    cli_on_mnist_slice(monkeypatch)
    assert cli.main(["train", "--resume", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_an_unavailable_device_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["train", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-guide: error: device cuda") and "Traceback" not in err
    assert not (tmp_path / "checkpoint.pt").exists()
