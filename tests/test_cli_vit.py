"""`mnist-guide train --model vit`, then `evaluate` and `export` on the ViT's checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import torch
from small_runs import cli_on_mnist_slice

from mnist_guide import cli, export, training
from mnist_guide.checkpoint import load_checkpoint
from mnist_guide.models import MnistViT, ViTConfig


def test_train_vit_then_evaluate_and_export_its_checkpoint(monkeypatch, tmp_path, capsys):
    cli_on_mnist_slice(monkeypatch)
    small = replace(training.VIT_RECIPE, model=ViTConfig(dim=32, depth=1, heads=2, mlp_dim=32))
    monkeypatch.setattr(training, "VIT_RECIPE", small)
    assert cli.main(["train", "--model", "vit", "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"]["model"] == asdict(small.model) and metrics["recipe"]["max_lr"] == small.max_lr
    model, checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert isinstance(model, MnistViT) and checkpoint.model_config["class"] == "MnistViT"
    capsys.readouterr()

    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(map(sum, report["confusion_matrix"])) == 10_000 and 0 <= report["accuracy"] <= 1

    for format, name in (("export", "vit.pt2"), ("torchscript", "vit.pt")):
        out = tmp_path / name
        assert cli.main(["export", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--format", format, "--out", str(out)]) == 0
        assert "matches the checkpoint" in capsys.readouterr().out
        pixels = export.example_pixels(3)
        with torch.inference_mode():
            torch.testing.assert_close(export.load_deployed(out)(pixels), export.make_deployable(model)(pixels), atol=1e-4, rtol=0)


def test_the_cli_trains_the_cnn_by_default():
    args = cli.build_parser().parse_args(["train", "--out", "somewhere"])
    assert args.model == "cnn"
