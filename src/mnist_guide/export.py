"""The trained model in deployable forms: TorchScript, torch.export, AOTInductor, ONNX; parity; a C++ classifier.

Every form takes float32 `[N, 1, 28, 28]` pixels in [0, 1] (what `ToTensor()` gives) and returns
logits `[N, 10]`: the normalisation lives inside the module, so a client needs no constants.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from mnist_guide.checkpoint import check_zip
from mnist_guide.data import MNIST_MEAN, MNIST_STD
from mnist_guide.runtime import artifacts_dir, atomic_write

#: The operator sets an ONNX file may use: ONNX's own and ONNX Runtime's built-in ones (no custom operators).
ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")

#: The largest absolute difference in logits allowed between an exported form and the eager model.
PARITY_TOLERANCE = 1e-4

#: The C++ classifier's source, shipped inside the package.
CPP_SOURCE = Path(__file__).with_name("classify.cpp")


class ExportError(ValueError):
    """A model file cannot be written, read or recognised, or the C++ program cannot be built."""


class DeployableMnist(nn.Module):
    """The trained CNN with its input normalisation inside: pixels in [0, 1] in, logits out."""

    def __init__(self, model: nn.Module, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def make_deployable(model: nn.Module) -> DeployableMnist:
    """Wrap a copy of `model` (on the CPU, in eval mode, channels_last: the CPU's fastest convolution layout)
    with the normalisation; the original is untouched."""
    model = copy.deepcopy(model).to("cpu", memory_format=torch.channels_last)
    return DeployableMnist(model).eval()


def example_pixels(batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    """Random float32 pixels `[batch_size, 1, 28, 28]` in [0, 1], the shape every deployed form takes."""
    return torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def quiet_torchscript_deprecation() -> Iterator[None]:
    """Silence torch's "`torch.jit.*` is deprecated" FutureWarning inside the block (09 shows it once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.[a-z_]+` is deprecated", category=FutureWarning)
        yield


def to_torchscript(module: nn.Module, method: str = "script", example: torch.Tensor | None = None):
    """Turn `module` into TorchScript by `"script"` (compiles the Python code) or `"trace"` (records one run)."""
    with quiet_torchscript_deprecation():
        if method == "trace":
            return torch.jit.trace(module, example if example is not None else example_pixels())
        return torch.jit.script(module)


def manifest_path(path: str | Path) -> Path:
    """Where the SHA-256 of a model file is recorded: `NAME.sha256` beside it, in `sha256sum` format."""
    return Path(path).with_name(Path(path).name + ".sha256")


def write_manifest(path: str | Path) -> Path:
    """Record the SHA-256 of a model file beside it: `load_deployed` trusts only files that match theirs."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    atomic_write(manifest_path(path), lambda temporary: temporary.write_text(f"{digest}  {Path(path).name}\n"))
    return Path(path)


def _check_manifest(path: Path) -> None:
    manifest = manifest_path(path)
    if not manifest.is_file():
        raise ExportError(f"{path}: no {manifest.name} beside it, so nothing says this course wrote it; a model file runs "
                          "code when loaded: load only files from `mnist-guide export`, or pass --trust for one you know")
    if manifest.read_text(encoding="utf-8", errors="replace").split()[:1] != [hashlib.sha256(path.read_bytes()).hexdigest()]:
        raise ExportError(f"{path}: its SHA-256 differs from {manifest.name} (changed or damaged since it was written); "
                          "export it again, or pass --trust if you changed it on purpose")


def _refuse_pickles(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse a `torch.export` archive holding anything torch would unpickle with `weights_only=False`."""
    for name in archive.namelist():
        inner = name.split("/", 1)[-1]
        if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
            raise ExportError(f"{path}: holds pickled weights ({inner}), which run code when loaded; refused")
        if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith("_config.json"):
            for entry in json.loads(archive.read(name)).get("config", {}).values():
                if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_")):
                    raise ExportError(f"{path}: {inner} asks for pickled objects, which run code when loaded; refused")
        if inner.startswith("data/sample_inputs/"):
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:
                raise ExportError(f"{path}: {inner} is not plain tensor data (it would run code when loaded); refused") from None


def save_torchscript(scripted: torch.jit.ScriptModule, path: str | Path) -> Path:
    """Write a TorchScript module atomically (a temporary file, then a rename) and its manifest; returns the path."""
    with quiet_torchscript_deprecation():
        atomic_write(path, lambda temporary: torch.jit.save(scripted, temporary))
    return write_manifest(path)


def export_program(module: nn.Module, example: torch.Tensor | None = None) -> torch.export.ExportedProgram:
    """`torch.export` the module (in eval mode) with a dynamic batch dimension, so one program serves any batch size."""
    example = example if example is not None else example_pixels(2)
    return torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Write an exported program with `torch.export.save`, atomically, and its manifest; returns the path (`.pt2`)."""
    atomic_write(path, lambda temporary: torch.export.save(program, temporary))
    return write_manifest(path)


@contextlib.contextmanager
def _aoti_quietly() -> Iterator[None]:
    """Run AOTInductor with its "No CUDA runtime" log (noise on a CPU) off and a private `TMPDIR`, removed afterwards:
    it unpacks a package there and removes it only when the model is destroyed, which a kernel's exit skips."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="mnist-guide-") as folder, mock.patch.dict(os.environ, TMPDIR=folder):
            yield
    finally:
        logger.setLevel(level)


def compile_aoti(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Compile an exported program ahead of time with AOTInductor into a `.pt2` package and its manifest."""
    if Path(path).suffix != ".pt2":
        raise ValueError(f"{path}: an AOTInductor package must end in .pt2")
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    def write(temporary: Path) -> None:  # Inductor's build files go to artifacts/, not the system temp folder
        with _aoti_quietly(), temporary_cache_dir(str(artifacts_dir() / "inductor")):
            torch._inductor.aoti_compile_and_package(program, package_path=str(temporary))

    atomic_write(path, write)
    return write_manifest(path)


def _require(*modules: str) -> None:
    """Import the optional packages ONNX needs, or say which to install."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ExportError(f"the ONNX form needs the package {name}: pip install 'mnist-guide[onnx]'") from None


def export_onnx(module: nn.Module, path: str | Path, example: torch.Tensor | None = None) -> Path:
    """Export the module (in eval mode) to ONNX with a dynamic batch, check the graph with `onnx.checker`,
    and write it atomically with its SHA-256 manifest; returns the path."""
    _require("onnx", "onnxscript")
    import onnx

    example = example if example is not None else example_pixels(2)
    program = torch.onnx.export(module, (example,), dynamo=True, verbose=False, input_names=["pixels"],
                                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    onnx.checker.check_model(program.model_proto, full_check=True)
    atomic_write(path, lambda temporary: temporary.write_bytes(program.model_proto.SerializeToString()))
    return write_manifest(path)


class OnnxRuntimeModel:
    """An ONNX file run by ONNX Runtime on the CPU: call it on a float32 tensor `[N, 1, 28, 28]`, get a tensor of logits."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same cores as PyTorch's
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([self.output], {self.input: array})[0])


def _load_onnx_file(path: Path) -> OnnxRuntimeModel:
    """Parse and check an ONNX file, refuse what could reach outside it, and open it in ONNX Runtime."""
    _require("onnx", "onnxruntime")
    import onnx

    data = path.read_bytes()
    model = onnx.load_model_from_string(data)  # protobuf's DecodeError on a damaged file: load_deployed reports it
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer):
        raise ExportError(f"{path}: its weights point to files outside it; refused (export it again as one file)")
    foreign = sorted({node.domain for node in model.graph.node} - set(ONNX_DOMAINS))
    if foreign or model.functions:
        raise ExportError(f"{path}: uses operators beyond ONNX's own ({', '.join(foreign) or 'local functions'}); refused")
    onnx.checker.check_model(model)
    return OnnxRuntimeModel(data)


def detect_format(path: str | Path) -> str:
    """Say which form a model file holds (torchscript, export, aoti, onnx), from the names inside its zip archive."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file. Write one with `mnist-guide export`.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        if path.suffix == ".onnx":  # an ONNX file is a protobuf message, not a zip archive
            return "onnx"
        raise ExportError(f"{path}: not a model archive ({error}). Write one with `mnist-guide export`.") from error
    if any("/data/aotinductor/" in name for name in names):
        return "aoti"
    if any(name.endswith("/models/model.json") for name in names):
        return "export"
    if any(name.endswith("/data.pkl") for name in names) and any("/code/" in name for name in names):
        return "torchscript"
    raise ExportError(f"{path}: a zip archive, but not TorchScript, torch.export or AOTInductor.")


@dataclass
class DeployedModel:
    """A model file loaded back: call it on pixels `[N, 1, 28, 28]` in [0, 1] to get logits `[N, 10]`."""

    path: Path
    format: str
    module: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(pixels)


def load_deployed(path: str | Path, format: str | None = None, *, trust: bool = False) -> DeployedModel:
    """Load a TorchScript file, a `torch.export` program, an AOTInductor package or an ONNX file, whichever `path` holds.

    Model files are code: the file must match the SHA-256 that `export` recorded beside it (unless
    `trust=True`), its zip CRCs must hold, a `.pt2` holding pickles is refused, and so is an ONNX
    file with external weights or custom operators.
    """
    path = Path(path)
    format = format or detect_format(path)
    if format != "onnx":
        check_zip(path, ExportError)
    if not trust:
        _check_manifest(path)
    if format == "export":
        with zipfile.ZipFile(path) as archive:
            _refuse_pickles(path, archive)
    try:
        if format == "torchscript":
            with quiet_torchscript_deprecation():
                module = torch.jit.load(str(path), map_location="cpu").eval()
        elif format == "export":
            with warnings.catch_warnings():  # said of every channels_last weight; harmless on the CPU
                warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
                module = torch.export.load(str(path)).module()
        elif format == "onnx":
            module = _load_onnx_file(path)
        else:
            with _aoti_quietly():
                module = torch._inductor.aoti_load_package(str(path))
    except ExportError:
        raise
    except Exception as error:  # torch's, ONNX's and ONNX Runtime's own errors: the file cannot serve
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{path}: could not load it as {format} ({first_line[:200]}); export it again.") from error
    return DeployedModel(path, format, module)


def load_onnx(path: str | Path, *, trust: bool = False) -> DeployedModel:
    """Load an ONNX file into ONNX Runtime (CPU), with `load_deployed`'s checks; call it on a pixel tensor."""
    return load_deployed(path, "onnx", trust=trust)


def export_model(model: nn.Module, format: str, out: str | Path) -> Path:
    """Write `model` as a `format` file (torchscript, export, aoti or onnx); what `mnist-guide export` does."""
    deployable = make_deployable(model)
    if format == "torchscript":
        return save_torchscript(to_torchscript(deployable), out)
    if format == "onnx":
        return export_onnx(deployable, out)
    program = export_program(deployable)
    return save_program(program, out) if format == "export" else compile_aoti(program, out)


# Parity


@dataclass
class ParityReport:
    """How one exported form compares with the eager model over a set of images."""

    name: str
    max_abs_diff: float
    tolerance: float
    accuracy: float
    reference_accuracy: float
    same_predictions: int
    count: int

    @property
    def ok(self) -> bool:
        """Within tolerance everywhere, and the same test accuracy as the eager model."""
        return self.max_abs_diff <= self.tolerance and self.accuracy == self.reference_accuracy  # NaN fails


@torch.inference_mode()
def check_parity(
    reference: Callable[[torch.Tensor], torch.Tensor], candidates: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    pixels: torch.Tensor, labels: torch.Tensor, *, tolerance: float = PARITY_TOLERANCE, batch_size: int = 1000
) -> list[ParityReport]:
    """Compare each candidate's logits with the reference's on every image; one report per candidate."""
    batches = [(pixels[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    expected = [reference(images) for images, _ in batches]
    reference_correct = sum(int((logits.argmax(1) == y).sum()) for logits, (_, y) in zip(expected, batches, strict=True))
    total, reports = len(labels), []
    for name, candidate in candidates.items():
        max_diff, correct, same = 0.0, 0, 0
        for want, (images, y) in zip(expected, batches, strict=True):
            got = candidate(images)
            difference = float((got - want).abs().max())
            max_diff = difference if difference != difference else max(max_diff, difference)  # NaN sticks
            correct += int((got.argmax(1) == y).sum())
            same += int((got.argmax(1) == want.argmax(1)).sum())
        reports.append(ParityReport(name, max_diff, tolerance, correct / total, reference_correct / total, same, total))
    return reports


def format_parity(reports: Sequence[ParityReport], show_difference: bool = False) -> str:
    """Render parity reports as a table (the measured difference only when asked: it varies by machine)."""
    within = "within " + format(reports[0].tolerance, ".0e")
    header = f"{'form':<12} {within:>12} {'accuracy':>9} {'eager':>8} {'same digit':>12}"
    lines = [header + (f" {'max |diff|':>11}" if show_difference else "")]
    for report in reports:
        ok = "yes" if report.max_abs_diff <= report.tolerance else "NO"
        same = f"{report.same_predictions}/{report.count}"
        line = f"{report.name:<12} {ok:>12} {report.accuracy:>9.2%} {report.reference_accuracy:>8.2%} {same:>12}"
        lines.append(line + (f" {report.max_abs_diff:>11.1e}" if show_difference else ""))
    return "\n".join(lines)


# Images for the C++ program: binary PGM


def pgm_bytes(image: torch.Tensor) -> bytes:
    """Encode a `[28, 28]` uint8 image as a binary PGM, the C++ classifier's input format: a text header
    (`P5`, width, height, 255, each followed by a newline: 13 bytes for 28 x 28), then the grey levels row by row.
    """
    height, width = image.shape
    return f"P5\n{width} {height}\n255\n".encode("ascii") + image.cpu().contiguous().numpy().tobytes()


def write_pgm(image: torch.Tensor, path: str | Path) -> Path:
    """Write a `[28, 28]` uint8 image as a binary PGM file."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(pgm_bytes(image)))


# The C++ classifier


def torch_install_dir() -> Path:
    """The installed torch package's folder, which holds libtorch's `include/` and `lib/`."""
    return Path(torch.__file__).resolve().parent


def compile_command(source: str | Path, output: str | Path, compiler: str = "g++") -> list[str]:
    """The g++ command line that builds a libtorch program against the installed torch wheel."""
    root = torch_install_dir()
    abi = int(torch.compiled_with_cxx11_abi())
    return [
        compiler, "-std=c++20", "-O2", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        str(source), "-o", str(output),
        f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10",
    ]


def classifier_path(source: str | Path = CPP_SOURCE, out_dir: str | Path | None = None) -> Path:
    """Where the built classifier lives: `artifacts/cpp/classify-<key>`, keyed by source, torch and flags."""
    source = Path(source)
    flags = " ".join(compile_command("SOURCE", "OUTPUT"))
    key = hashlib.sha256(source.read_bytes() + torch.__version__.encode() + flags.encode()).hexdigest()
    folder = Path(out_dir) if out_dir is not None else artifacts_dir() / "cpp"
    return folder / f"{source.stem}-{key[:16]}"


def build_classifier(
    source: str | Path = CPP_SOURCE, out_dir: str | Path | None = None, *, compiler: str = "g++"
) -> Path:
    """Build the C++ classifier with g++ against the wheel's libtorch, or reuse the cached binary."""
    binary = classifier_path(source, out_dir)
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    if shutil.which(compiler) is None:
        raise ExportError(f"{compiler} not found: install a C++20 compiler (Debian/Ubuntu: apt install g++).")

    def build(temporary: Path) -> None:
        result = subprocess.run(compile_command(source, temporary, compiler), capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-20:])
            raise ExportError(f"building {source} failed (exit {result.returncode}):\n{tail}")

    atomic_write(binary, build, mode=0o755)
    return binary

