"""mnist_guide.export: the deployable module, TorchScript, torch.export, AOTInductor, parity, the C++ classifier."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_guide import cli, export
from mnist_guide.checkpoint import load_checkpoint
from mnist_guide.data import MNIST_MEAN, MNIST_STD, mnist_tensors, prepare_mnist


@pytest.fixture(scope="module")
def model(course_checkpoint: Path) -> nn.Module:
    return load_checkpoint(course_checkpoint)[0].eval()


@pytest.fixture(scope="module")
def test_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_tensors(train=False, normalize=False)


@pytest.fixture(scope="module")
def aoti_file(course_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AOTInductor package written by `mnist-guide export --format aoti` (about 30 s to compile)."""
    out = tmp_path_factory.mktemp("aoti") / "mnist_cnn_aoti.pt2"
    assert cli.main(["export", "--checkpoint", str(course_checkpoint), "--format", "aoti", "--out", str(out)]) == 0
    return out


class Gate(nn.Module):
    """Data-dependent control flow: doubles a batch with a positive mean, negates it otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return 2 * x
        return -x


# --------------------------------------------------------------------------------------------
# The deployable module


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_deployable_normalises_inside_and_takes_any_batch(model, batch_size):
    pixels = export.example_pixels(batch_size)
    deployable = export.make_deployable(model)
    with torch.inference_mode():
        logits = deployable(pixels)
        expected = model((pixels - MNIST_MEAN) / MNIST_STD)
    assert logits.shape == (batch_size, 10) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected)


def test_make_deployable_leaves_the_original_untouched(model):
    deployable = export.make_deployable(model)
    assert not deployable.training
    assert deployable.model is not model
    assert all(p.device.type == "cpu" for p in deployable.parameters())
    convolutions = [p for p in deployable.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions), "channels_last kept"


def test_trace_freezes_a_branch_that_script_keeps():
    positive, negative = torch.ones(3), -torch.ones(3)
    with pytest.warns(torch.jit.TracerWarning):
        traced = export.to_torchscript(Gate(), "trace", example=positive)
    scripted = export.to_torchscript(Gate(), "script")
    assert torch.equal(scripted(negative), Gate()(negative))
    assert torch.equal(traced(negative), 2 * negative), "the trace recorded only the positive branch"


def test_script_and_trace_agree_on_the_course_model(model):
    deployable = export.make_deployable(model)
    pixels = export.example_pixels(5)
    with torch.inference_mode():
        scripted = export.to_torchscript(deployable, "script")(pixels)
        traced = export.to_torchscript(deployable, "trace")(pixels)
    torch.testing.assert_close(scripted, traced)


def test_exported_program_takes_any_batch_and_guards_the_image_shape(model):
    program = export.export_program(export.make_deployable(model))
    module = program.module()
    for batch_size in (1, 2, 7, 300):
        assert module(export.example_pixels(batch_size)).shape == (batch_size, 10)
    with pytest.raises(Exception, match="28"):
        module(torch.rand(2, 1, 32, 32))


# --------------------------------------------------------------------------------------------
# Files: formats, loading, atomic writes


def test_detect_format_and_load_each_cli_file(exported_files):
    for format, path in exported_files.items():
        assert export.detect_format(path) == format
        loaded = export.load_deployed(path)
        assert loaded.format == format
        assert loaded(export.example_pixels(4)).shape == (4, 10)


def test_load_deployed_explains_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist-guide export"):
        export.load_deployed(tmp_path / "missing.pt")


def test_load_deployed_refuses_a_file_that_is_not_a_model(tmp_path):
    not_zip = tmp_path / "notes.pt"
    not_zip.write_text("hello")
    with pytest.raises(export.ExportError, match="not a model archive"):
        export.load_deployed(not_zip)
    other_zip = tmp_path / "other.pt2"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("other/readme.txt", "not a model")
    with pytest.raises(export.ExportError, match="not TorchScript"):
        export.load_deployed(other_zip)


def test_load_deployed_reports_a_truncated_file(exported_files, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(exported_files["torchscript"].read_bytes()[:5000])
    with pytest.raises(export.ExportError):
        export.load_deployed(truncated, format="torchscript")


def _copy(path: Path, to: Path, *, manifest: bool = True) -> Path:
    to.write_bytes(path.read_bytes())
    if manifest:
        export.write_manifest(to)
    return to


def test_a_model_file_without_a_matching_manifest_is_refused_unless_trusted(exported_files, tmp_path):
    stranger = _copy(exported_files["torchscript"], tmp_path / "stranger.pt", manifest=False)
    with pytest.raises(export.ExportError, match="no stranger.pt.sha256 beside it.*--trust"):
        export.load_deployed(stranger)
    assert export.load_deployed(stranger, trust=True).format == "torchscript"
    swapped = _copy(exported_files["torchscript"], tmp_path / "swapped.pt")
    swapped.write_bytes(exported_files["export"].read_bytes())  # another valid model under the old manifest
    with pytest.raises(export.ExportError, match="SHA-256 differs"):
        export.load_deployed(swapped)


@pytest.mark.parametrize("format", ["torchscript", "export"])
def test_flipped_bits_in_a_model_file_are_refused_even_when_trusted(exported_files, tmp_path, format):
    path = _copy(exported_files[format], tmp_path / exported_files[format].name, manifest=False)
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.compress_size)
    data = bytearray(path.read_bytes())
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra) + 16
    for offset in range(start, start + 100):
        data[offset] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(export.ExportError, match="CRC"):
        export.load_deployed(path, trust=True)


class _Payload:
    """Unpickling this creates `marker`: what a hostile model file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _hostile_pt2(clean: Path, out: Path, marker: Path, how: str) -> Path:
    """A copy of a real .pt2 carrying a pickle payload the way `how` says, with a manifest that matches it."""
    payload = io.BytesIO()
    torch.save(_Payload(marker), payload)
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(out, "w") as target:
        root = source.namelist()[0].split("/", 1)[0]
        for name in source.namelist():
            content = source.read(name)
            if how == "use_pickle" and name.endswith("data/weights/model_weights_config.json"):
                config = json.loads(content)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                source_weight = first["path_name"]
                content = json.dumps(config).encode()
            if how == "sample_inputs" and name.endswith("data/sample_inputs/model.pt"):
                content = payload.getvalue()
            target.writestr(name, content)
        if how == "legacy":
            target.writestr(f"{root}/data/weights/model.pt", payload.getvalue())
        if how == "use_pickle":
            target.writestr(f"{root}/data/weights/{source_weight}.pickled", payload.getvalue())
    export.write_manifest(out)
    return out


@pytest.mark.parametrize("how", ["legacy", "use_pickle", "sample_inputs"])
def test_a_pt2_carrying_pickles_is_refused_before_torch_opens_it(exported_files, tmp_path, how):
    marker = tmp_path / "payload-ran"
    hostile = _hostile_pt2(exported_files["export"], tmp_path / f"{how}.pt2", marker, how)
    for trust in (False, True):
        with pytest.raises(export.ExportError, match="run code when loaded"):
            export.load_deployed(hostile, trust=trust)
    assert not marker.exists(), "the payload ran"


def test_exported_files_are_written_with_their_manifest_and_mode_0644(exported_files):
    for path in exported_files.values():
        assert export.manifest_path(path).read_text().split() == [hashlib.sha256(path.read_bytes()).hexdigest(), path.name]
        assert path.stat().st_mode & 0o777 == 0o644


def test_a_full_disk_keeps_the_previous_file_and_its_manifest(model, tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    scripted = export.to_torchscript(export.make_deployable(model))
    export.save_torchscript(scripted, target)
    before, manifest = target.read_bytes(), export.manifest_path(target).read_text()

    def full_disk(module, path):
        Path(path).write_bytes(before[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export.save_torchscript(scripted, target)
    assert target.read_bytes() == before and export.manifest_path(target).read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.sha256"], "no temporary file is left"


def test_cli_export_errors_are_short_messages(tmp_path, capsys):
    code = cli.main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--format", "export", "--out", str(tmp_path / "m.pt2")])
    assert code == 2
    assert "no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", "--checkpoint", "x.pt", "--format", "tflite", "--out", "m.tflite"])


def test_loading_an_aoti_package_leaves_nothing_in_the_temp_folder(aoti_file, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    deployed = export.load_deployed(aoti_file)
    assert list(tmp_path.iterdir()) == [], "AOTInductor's unpacked package was left behind"
    assert os.environ["TMPDIR"] == str(tmp_path), "TMPDIR is restored"
    assert deployed(export.example_pixels(3)).shape == (3, 10), "the model runs once its unpacked files are gone"


def test_compile_aoti_builds_under_artifacts_not_the_system_temp_folder(model, tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("MNIST_GUIDE_ARTIFACTS", str(tmp_path / "artifacts"))
    cache_dir()  # torch has already settled on its default folder, as in a notebook that compiled before
    seen = []

    def fake_compile(program, package_path):
        seen.append(cache_dir())
        Path(package_path).write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: the rest is not under test

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_compile)
    export.compile_aoti(export.export_program(export.make_deployable(model)), tmp_path / "m.pt2")
    assert seen == [str(tmp_path / "artifacts" / "inductor")]
    assert cache_dir() != seen[0], "torch's own cache folder is restored afterwards"


def test_compile_aoti_wants_a_pt2_name(model, tmp_path):
    with pytest.raises(ValueError, match=".pt2"):
        export.compile_aoti(export.export_program(export.make_deployable(model)), tmp_path / "model.so")


# --------------------------------------------------------------------------------------------
# ONNX, run with ONNX Runtime


@pytest.fixture(scope="module")
def onnx_file(course_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course model as ONNX, written by `mnist-guide export --format onnx` (a few seconds)."""
    out = tmp_path_factory.mktemp("onnx") / "mnist_cnn.onnx"
    assert cli.main(["export", "--checkpoint", str(course_checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_the_onnx_file_passes_the_checker_and_keeps_a_dynamic_batch(onnx_file):
    import onnx

    model = onnx.load(onnx_file)
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    assert graph_input.name == "pixels" and [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [
        "batch", 1, 28, 28]
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, "only ONNX's own operators"
    assert export.manifest_path(onnx_file).read_text().split() == [hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
                                                                   onnx_file.name]
    assert onnx_file.stat().st_mode & 0o777 == 0o644


def test_onnx_runtime_runs_the_file_at_any_batch_and_refuses_other_shapes(onnx_file, model):
    assert export.detect_format(onnx_file) == "onnx"
    loaded = export.load_onnx(onnx_file)
    assert loaded.format == "onnx" and isinstance(loaded.module, export.OnnxRuntimeModel)
    deployable = export.make_deployable(model)
    with torch.inference_mode():
        for batch_size in (1, 7, 300):
            pixels = export.example_pixels(batch_size)
            logits = loaded(pixels)
            assert isinstance(logits, torch.Tensor) and logits.shape == (batch_size, 10)
            torch.testing.assert_close(logits, deployable(pixels), atol=export.PARITY_TOLERANCE, rtol=0)
    with pytest.raises(Exception, match="28"):
        loaded(torch.rand(2, 1, 32, 32))


def test_onnx_matches_eager_on_the_whole_test_set(onnx_file, model, test_pixels):
    reports = export.check_parity(export.make_deployable(model), {"onnx": export.load_onnx(onnx_file)}, *test_pixels)
    assert reports[0].ok and reports[0].same_predictions == reports[0].count == 10_000, export.format_parity(reports, True)


def test_a_damaged_onnx_file_is_refused_with_one_line(onnx_file, tmp_path):
    flipped = _copy(onnx_file, tmp_path / "flipped.onnx")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x04  # one bit in a weight: ONNX has no checksum of its own, the manifest catches it
    flipped.write_bytes(bytes(data))
    with pytest.raises(export.ExportError, match="SHA-256 differs") as caught:
        export.load_deployed(flipped)
    assert "\n" not in str(caught.value)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[:5000])
    with pytest.raises(export.ExportError, match="could not load it as onnx") as caught:
        export.load_deployed(truncated, trust=True)
    assert "\n" not in str(caught.value)
    stranger = _copy(onnx_file, tmp_path / "stranger.onnx", manifest=False)
    with pytest.raises(export.ExportError, match="no stranger.onnx.sha256 beside it"):
        export.load_onnx(stranger)
    assert export.load_onnx(stranger, trust=True).format == "onnx"


@pytest.mark.parametrize("how", ["external weights", "custom operator"])
def test_an_onnx_file_reaching_beyond_itself_is_refused_even_when_trusted(onnx_file, tmp_path, how):
    import onnx

    model = onnx.load(onnx_file)
    if how == "external weights":
        weight = model.graph.initializer[0]
        weight.ClearField("raw_data")
        weight.data_location = onnx.TensorProto.EXTERNAL
        weight.external_data.add(key="location", value="../../../etc/passwd")
        message = "outside it"
    else:
        model.graph.node[0].domain = "com.example.custom"
        message = "beyond ONNX's own"
    hostile = tmp_path / "hostile.onnx"
    hostile.write_bytes(model.SerializeToString())
    export.write_manifest(hostile)
    for trust in (False, True):
        with pytest.raises(export.ExportError, match=message):
            export.load_deployed(hostile, trust=trust)


def test_cli_export_onnx_wants_an_onnx_name(course_checkpoint, tmp_path, capsys):
    code = cli.main(["export", "--checkpoint", str(course_checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.pt")])
    assert code == 2 and "must end in .onnx" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_a_missing_onnx_package_is_explained(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    with pytest.raises(export.ExportError, match=r"pip install 'mnist-guide\[onnx\]'"):
        export.export_onnx(export.make_deployable(model), tmp_path / "m.onnx")


# --------------------------------------------------------------------------------------------
# Parity on the whole test set, and a fresh process without mnist_guide


@pytest.mark.slow
def test_every_exported_form_matches_eager_on_the_test_set(model, exported_files, aoti_file, test_pixels):
    pixels, labels = test_pixels
    candidates = {format: export.load_deployed(path) for format, path in exported_files.items()}
    candidates["aoti"] = export.load_deployed(aoti_file)
    reports = export.check_parity(export.make_deployable(model), candidates, pixels, labels)
    assert [report.name for report in reports] == ["torchscript", "export", "aoti"]
    for report in reports:
        assert report.ok, export.format_parity(reports, show_difference=True)
        assert report.accuracy >= 0.994
        assert report.same_predictions == report.count == 10_000


def test_check_parity_flags_a_difference_and_nan(model, test_pixels):
    pixels, labels = test_pixels[0][:200], test_pixels[1][:200]
    deployable = export.make_deployable(model)
    reports = export.check_parity(deployable, {"shifted": lambda x: deployable(x) + 1e-3,
                                               "nan": lambda x: deployable(x) * float("nan")}, pixels, labels)
    assert not reports[0].ok and reports[0].max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    assert not reports[1].ok and reports[1].max_abs_diff != reports[1].max_abs_diff, "NaN is not within any tolerance"
    assert "NO" in export.format_parity(reports)


FRESH_PROCESS_SCORE = textwrap.dedent(
    """
    import json, sys
    import torch

    images_path, labels_path, *models = sys.argv[1:]
    raw_images = open(images_path, "rb").read()[16:]
    raw_labels = open(labels_path, "rb").read()[8:]
    pixels = torch.frombuffer(bytearray(raw_images), dtype=torch.uint8).view(-1, 1, 28, 28).float() / 255
    labels = torch.frombuffer(bytearray(raw_labels), dtype=torch.uint8).long()
    scores = {}
    for spec in models:
        format, path = spec.split("=", 1)
        if format == "torchscript":
            model = torch.jit.load(path)
        elif format == "export":
            model = torch.export.load(path).module()
        else:
            model = torch._inductor.aoti_load_package(path)
        with torch.inference_mode():
            predictions = torch.cat([model(batch).argmax(1) for batch in pixels.split(1000)])
        scores[format] = (predictions == labels).float().mean().item()
    print(json.dumps({"scores": scores, "mnist_guide_imported": "mnist_guide" in sys.modules}))
    """
)


@pytest.mark.slow
def test_a_fresh_process_without_mnist_guide_scores_the_exported_files(exported_files, aoti_file, tmp_path):
    raw = prepare_mnist() / "MNIST" / "raw"
    script = tmp_path / "score.py"
    script.write_text(FRESH_PROCESS_SCORE)
    specs = [f"{format}={path}" for format, path in {**exported_files, "aoti": aoti_file}.items()]
    result = subprocess.run(
        [sys.executable, "-W", "ignore::FutureWarning", str(script),
         str(raw / "t10k-images-idx3-ubyte"), str(raw / "t10k-labels-idx1-ubyte"), *specs],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["mnist_guide_imported"] is False
    assert set(outcome["scores"]) == {"torchscript", "export", "aoti"}
    for format, accuracy in outcome["scores"].items():
        assert accuracy >= 0.994, f"{format}: {accuracy:.2%}"


# --------------------------------------------------------------------------------------------
# PGM images and the C++ classifier


def test_pgm_bytes_is_a_header_and_the_grey_levels(test_pixels):
    from PIL import Image

    image = (test_pixels[0][0, 0] * 255).round().to(torch.uint8)
    data = export.pgm_bytes(image)
    assert data.startswith(b"P5\n28 28\n255\n") and len(data) == 13 + 784
    decoded = Image.open(__import__("io").BytesIO(data))
    assert decoded.size == (28, 28)
    assert torch.equal(torch.frombuffer(bytearray(decoded.tobytes()), dtype=torch.uint8).view(28, 28), image)


def test_compile_command_uses_the_wheel_and_the_flags_the_guide_names():
    command = export.compile_command("prog.cpp", "prog")
    root = export.torch_install_dir()
    assert command[:3] == ["g++", "-std=c++20", "-O2"]
    assert "-D_GLIBCXX_USE_CXX11_ABI=1" in command
    assert f"-I{root / 'include'}" in command and f"-Wl,-rpath,{root / 'lib'}" in command
    assert command[-3:] == ["-ltorch", "-ltorch_cpu", "-lc10"]


def test_the_cache_key_follows_the_source(tmp_path):
    source = tmp_path / "classify.cpp"
    source.write_text("int main() { return 0; }\n")
    first = export.classifier_path(source, tmp_path)
    source.write_text("int main() { return 1; }\n")
    assert export.classifier_path(source, tmp_path) != first
    assert export.classifier_path().parent.name == "cpp"


def test_a_broken_source_gives_the_compiler_message(tmp_path):
    source = tmp_path / "broken.cpp"
    source.write_text("int main( {\n")
    with pytest.raises(export.ExportError, match="failed"):
        export.build_classifier(source, tmp_path)
    assert not any(tmp_path.glob("broken-*")), "no binary is left from a failed build"


def test_a_missing_compiler_is_explained(tmp_path):
    with pytest.raises(export.ExportError, match="not found"):
        export.build_classifier(out_dir=tmp_path, compiler="no-such-g++")


def run_classifier(binary: Path, model: Path, images: Sequence[Path] = (), *, stdin: bytes | None = None) -> list[int]:
    """Run the C++ classifier on PGM files (or PGM bytes on stdin); returns the digits it printed."""
    command = [str(binary), str(model), *map(str, images)]
    result = subprocess.run(command, input=stdin, capture_output=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {result.stderr.decode(errors='replace').strip()}")
    return [int(line) for line in result.stdout.decode().split()]


@pytest.fixture(scope="module")
def classifier() -> Path:
    """The C++ classifier, built once (about 20 s) and cached in artifacts/cpp/."""
    return export.build_classifier()


@pytest.mark.slow
def test_the_cpp_program_classifies_test_images(classifier, exported_files, model, test_pixels, tmp_path):
    pixels, labels = test_pixels[0][:12], test_pixels[1][:12]
    images = (pixels[:, 0] * 255).round().to(torch.uint8)
    files = [export.write_pgm(image, tmp_path / f"digit_{i}.pgm") for i, image in enumerate(images)]
    with torch.inference_mode():
        expected = export.make_deployable(model)(images[:, None].float() / 255).argmax(1).tolist()
    from_files = run_classifier(classifier, exported_files["torchscript"], files)
    from_stdin = run_classifier(classifier, exported_files["torchscript"], stdin=b"".join(map(export.pgm_bytes, images)))
    assert from_files == from_stdin == expected
    assert sum(d == y for d, y in zip(from_files, labels.tolist(), strict=True)) >= 11


@pytest.mark.slow
def test_the_cpp_program_is_cached(classifier):
    modified = classifier.stat().st_mtime_ns
    assert export.build_classifier() == classifier
    assert classifier.stat().st_mtime_ns == modified


@pytest.mark.slow
def test_the_cpp_program_refuses_bad_input(classifier, exported_files, tmp_path):
    model_file = exported_files["torchscript"]
    not_pgm = tmp_path / "digit.png"
    not_pgm.write_bytes(b"\x89PNG not really")
    wrong_size = tmp_path / "big.pgm"
    wrong_size.write_bytes(b"P5\n32 32\n255\n" + bytes(32 * 32))
    truncated = tmp_path / "short.pgm"
    truncated.write_bytes(b"P5\n28 28\n255\n" + bytes(100))
    cases = [
        ([not_pgm], "P5"), ([wrong_size], "32 x 32"), ([truncated], "truncated"),
        ([tmp_path / "missing.pgm"], "cannot open"),
    ]
    for images, message in cases:
        with pytest.raises(RuntimeError, match=message):
            run_classifier(classifier, model_file, images)
    with pytest.raises(RuntimeError, match="cannot load"):
        run_classifier(classifier, not_pgm, stdin=export.pgm_bytes(torch.zeros(28, 28, dtype=torch.uint8)))
    with pytest.raises(RuntimeError, match="no images"):
        run_classifier(classifier, model_file, stdin=b"")
    usage = subprocess.run([str(classifier)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
