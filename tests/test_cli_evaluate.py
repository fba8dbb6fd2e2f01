"""`mnist-guide evaluate`: the report as text and JSON, and clear errors for bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mnist_guide.checkpoint import save_checkpoint
from mnist_guide.cli import main


def test_evaluate_json_on_the_course_checkpoint(course_checkpoint, capsys):
    assert main(["evaluate", "--checkpoint", str(course_checkpoint), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix"} <= set(report)
    assert report["accuracy"] >= 0.994
    assert len(report["per_class"]) == 10
    assert {"class", "support", "precision", "recall", "f1"} <= set(report["per_class"][0])
    matrix = report["confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert sum(map(sum, matrix)) == report["samples"] == 10_000
    assert sum(matrix[c][c] for c in range(10)) == round(report["accuracy"] * 10_000)


def test_evaluate_prints_tables_without_json(monkeypatch, capsys):
    import mnist_guide.evaluation as evaluation

    metrics = evaluation.classification_metrics(num_classes=10)
    labels = torch.arange(20) % 10
    metrics.update(nn.functional.one_hot((labels + (labels == 9).long()) % 10, 10).float(), labels)
    report = evaluation.classification_report(metrics.compute())
    seen = {}

    def fake_evaluate(path, *, device=None, batch_size=1000):
        seen.update(path=path, device=device, batch_size=batch_size)
        return report

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", fake_evaluate)
    assert main(["evaluate", "--checkpoint", "model.pt", "--batch-size", "2500"]) == 0
    assert seen == {"path": "model.pt", "device": None, "batch_size": 2500}
    out = capsys.readouterr().out
    assert out.startswith("accuracy  90.00%  (18 of 20 correct, 2 mistakes)")
    assert "precision" in out and "recall" in out and "confusion matrix" in out
    assert len([line for line in out.splitlines() if line.strip().startswith("9 ")]) == 2  # table row and matrix row


def test_evaluate_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nothing.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_evaluate_garbage_file_exits_2(tmp_path, capsys):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a readable archive" in err and str(path) in err


def test_evaluate_foreign_torch_file_exits_2(tmp_path, capsys):
    path = tmp_path / "weights_only.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    assert "not an mnist-guide checkpoint" in capsys.readouterr().err


def test_evaluate_checkpoint_of_another_model_exits_2(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "linear.pt", nn.Linear(784, 10), epoch=1)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    assert "holds a Linear" in capsys.readouterr().err


def test_evaluate_refuses_a_zero_batch_size(course_checkpoint):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(course_checkpoint), "--batch-size", "0"])
    assert exit_info.value.code == 2
