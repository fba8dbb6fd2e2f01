"""MNIST from the committed files (never downloaded): verify, open with torchvision, hold as tensors, batch."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_guide.runtime import atomic_write, data_dir

#: Mean and standard deviation of the training pixels after scaling to [0, 1] (computed in 06_data_loading).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
#: A black pixel (0) after normalisation: what shifted, turned or padded digits are filled with.
NORMALISED_BLACK = (0.0 - MNIST_MEAN) / MNIST_STD

CLASSES = tuple(str(digit) for digit in range(10))

RESTORE_HINT = "Restore it from git: git checkout -- data/"


class MnistDataError(RuntimeError):
    """A MNIST file is missing, damaged or not what the course expects."""


@dataclass(frozen=True)
class IdxFile:
    """One of the four MNIST files: its name, expected IDX header and checksums."""

    name: str  # file name without .gz, as torchvision expects it
    magic: int  # 2051 for images, 2049 for labels
    shape: tuple[int, ...]
    gz_sha256: str  # of the committed .gz
    raw_sha256: str  # of the uncompressed, original bytes

    @property
    def size(self) -> int:
        return 4 + 4 * len(self.shape) + math.prod(self.shape)  # magic, a 4-byte count per dimension, the bytes


MNIST_FILES: dict[str, IdxFile] = {
    row[0]: IdxFile(*row)
    for row in (  # name, magic, shape, SHA-256 of the .gz, SHA-256 of its content
        ("train-images-idx3-ubyte", 2051, (60000, 28, 28), "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        ("train-labels-idx1-ubyte", 2049, (60000,), "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        ("t10k-images-idx3-ubyte", 2051, (10000, 28, 28), "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        ("t10k-labels-idx1-ubyte", 2049, (10000,), "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    )
}


def _decompress_and_check(gz_path: Path, spec: IdxFile) -> bytes:
    """Decompress one .gz (never past its expected size) and check its IDX header, length and checksum."""
    try:
        with gzip.open(gz_path, "rb") as stream:
            raw = stream.read(spec.size + 1)
    except EOFError as error:
        raise MnistDataError(f"{gz_path}: truncated gzip file ({error}). {RESTORE_HINT}") from error
    except (gzip.BadGzipFile, zlib.error, OSError) as error:
        raise MnistDataError(f"{gz_path}: not a valid gzip file ({error}). {RESTORE_HINT}") from error
    header_size = 4 + 4 * len(spec.shape)
    if len(raw) < header_size:
        raise MnistDataError(f"{gz_path}: only {len(raw)} bytes, too short for an IDX header. {RESTORE_HINT}")
    magic, *dims = struct.unpack(f">{1 + len(spec.shape)}I", raw[:header_size])
    if magic != spec.magic or tuple(dims) != spec.shape:
        raise MnistDataError(
            f"{gz_path}: IDX header says magic {magic} and shape {tuple(dims)}, "
            f"expected magic {spec.magic} and shape {spec.shape} (wrong or damaged file?). {RESTORE_HINT}"
        )
    if len(raw) != spec.size:
        found = "more than that" if len(raw) > spec.size else f"{len(raw)} (truncated?)"
        raise MnistDataError(f"{gz_path}: {spec.size} bytes expected once decompressed, {found}. {RESTORE_HINT}")
    if hashlib.sha256(raw).hexdigest() != spec.raw_sha256:
        raise MnistDataError(f"{gz_path}: checksum mismatch (file corrupt?). {RESTORE_HINT}")
    return raw


def prepare_mnist(root: str | Path | None = None) -> Path:
    """Verify the four MNIST files under `root/MNIST/raw` and decompress them for torchvision; returns `root`.

    A missing or damaged file raises `MnistDataError` naming it, so nothing trains on a partial file.
    """
    root = Path(root) if root is not None else data_dir()
    for spec in MNIST_FILES.values():
        gz_path, raw_path = root / "MNIST" / "raw" / f"{spec.name}.gz", root / "MNIST" / "raw" / spec.name
        if not gz_path.is_file():
            problem = "missing" if not gz_path.exists() else "not a regular file"
            raise MnistDataError(f"{gz_path}: {problem}. {RESTORE_HINT}")
        try:
            raw_is_good = raw_path.is_file() and hashlib.sha256(raw_path.read_bytes()).hexdigest() == spec.raw_sha256
            if raw_is_good and hashlib.sha256(gz_path.read_bytes()).hexdigest() == spec.gz_sha256:
                continue
            raw = _decompress_and_check(gz_path, spec)  # any other .gz is checked fully
            atomic_write(raw_path, lambda temporary, raw=raw: temporary.write_bytes(raw))
        except OSError as error:
            raise MnistDataError(f"{gz_path}: cannot be read or unpacked ({error.strerror or error}).") from error
    return root


def mnist_dataset(train: bool, transform: Callable | None = None, root: str | Path | None = None):
    """`torchvision.datasets.MNIST` over the verified local files (never downloads)."""
    import torchvision

    root = prepare_mnist(root)
    return torchvision.datasets.MNIST(str(root), train=train, transform=transform, download=False)


def mnist_tensors(train: bool, root: str | Path | None = None,
                  normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole split as float32 `[N, 1, 28, 28]` images in [0, 1] (standardised when `normalize`) and int64 labels."""
    dataset = mnist_dataset(train, root=root)
    images = dataset.data.unsqueeze(1).to(torch.float32).div_(255.0)
    if normalize:
        images.sub_(MNIST_MEAN).div_(MNIST_STD)
    return images, dataset.targets.to(torch.int64)


def shift_images(images: torch.Tensor, offsets: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Move each normalised image `[N, 1, H, W]` by `offsets[i] - max_shift` pixels (rows, columns), filling with black."""
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=NORMALISED_BLACK)
    rows = torch.arange(height).view(1, height, 1) + offsets[:, 0].view(n, 1, 1)
    cols = torch.arange(width).view(1, 1, width) + offsets[:, 1].view(n, 1, 1)
    return padded[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)


def random_offsets(count: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """`[count, 2]` random offsets in `0..2*max_shift` (row, column) for `shift_images`."""
    return torch.randint(0, 2 * max_shift + 1, (2, count), generator=generator).T


def random_shift(max_shift: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """An augmentation for `TensorLoader`: each image moved by up to `max_shift` pixels in x and y."""
    return lambda images, generator: shift_images(images, random_offsets(len(images), max_shift, generator), max_shift)


def random_affine(max_shift: float, max_degrees: float, max_scale: float) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """An augmentation for `TensorLoader`: each image turned, scaled and moved at random, in one `grid_sample` call.

    Up to `max_degrees` either way, a factor within `1 ± max_scale`, up to `max_shift` pixels in x and y; black fills in.
    """

    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        draws = torch.rand(len(images), 4, generator=generator) * 2 - 1  # in [-1, 1): angle, scale, x, y
        angle, scale = draws[:, 0] * math.radians(max_degrees), 1 + draws[:, 1] * max_scale
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        shift = draws[:, 2:] * (2 * max_shift / images.shape[-1])  # the image spans [-1, 1] in grid units
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # grid_sample fills with zeros: sample the images with black at zero
        return F.grid_sample(images - NORMALISED_BLACK, grid, align_corners=False) + NORMALISED_BLACK

    return augment


#: Both splits held in memory: (train images, train labels, test images, test labels).
MnistSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class TensorLoader:
    """Batches sliced from tensors (a `DataLoader` without per-sample work), seeded per epoch so a resume is exact.

    `fraction` < 1 ends each epoch early: it sees that share of the (shuffled) images, in as many batches.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False,
        seed: int = 0, drop_last: bool = False, device: torch.device | str | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None, fraction: float = 1.0
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.device = torch.device(device) if device is not None else images.device
        self.augment, self.fraction = augment, fraction
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's shuffle the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        full = len(self.images) // self.batch_size if self.drop_last else math.ceil(len(self.images) / self.batch_size)
        return full if self.fraction == 1 else max(1, round(full * self.fraction))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        count = len(self.images)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images, labels = self.images[index], self.labels[index]
            if self.augment is not None:
                images = self.augment(images, generator)
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def make_loaders(
    batch_size: int = 256, *, test_batch_size: int = 1000, data: MnistSplits | None = None, seed: int = 0,
    device: torch.device | str | None = None, drop_last: bool = False,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None, fraction: float = 1.0
) -> tuple[TensorLoader, TensorLoader]:
    """`(train_loader, test_loader)` over `data` (train images, labels, test images, labels; MNIST when `None`).

    The training loader shuffles (seeded), may augment and may see a `fraction` of each epoch; the test loader keeps the order.
    """
    if data is None:
        data = (*mnist_tensors(train=True), *mnist_tensors(train=False))
    train_images, train_labels, test_images, test_labels = data
    train_loader = TensorLoader(train_images, train_labels, batch_size, shuffle=True, seed=seed, drop_last=drop_last,
                                device=device, augment=augment, fraction=fraction)
    test_loader = TensorLoader(test_images, test_labels, test_batch_size, device=device)
    return train_loader, test_loader


# --------------------------------------------------------------------------------------------
# Any image of a digit -> an MNIST-style input

#: MNIST's layout, measured on the test set (tests/test_preprocess.py keeps it true): every digit fits
#: a 20 x 20 box (its longer side is 20 pixels) and its centre of mass sits at pixel (14, 14).
MNIST_SIDE = 28
MNIST_BOX = 20
MNIST_CENTRE = 14.0

#: An image whose ink differs from its paper by less than this (in [0, 1]) is blank: `NoInkError`.
MIN_INK_CONTRAST = 0.1


class NoInkError(ValueError):
    """The image holds no digit: it is blank, or its strokes barely differ from the paper."""


def _as_float_image(image, max_value: float | None):
    """Any `[H, W]`, `[H, W, C]` or `[C, H, W]` array or tensor (C = 1-4) as a float32 NumPy `[H, W, C]` in [0, 1]."""
    import numpy as np

    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape[2] not in (1, 2, 3, 4) and array.shape[0] in (1, 2, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first, as torchvision gives them
    if max_value is None:  # the type's full range: 255 for 8 bits, 65535 for 16, 1 for floats and booleans
        max_value = np.iinfo(array.dtype).max if array.dtype.kind in "iu" else 1.0
    pixels = array.astype(np.float32) / np.float32(max_value)
    return np.clip(np.nan_to_num(pixels, nan=0.0), 0.0, 1.0)


def ink_on_black(image, *, max_value: float | None = None) -> torch.Tensor:
    """The ink of any grey/RGB/RGBA image as float32 `[H, W]`, light on black as in MNIST (0 where the paper is).

    Transparency becomes paper, colour grey (ITU-R 601 luma, as Pillow's `convert("L")`); the border shows the paper.
    """
    import numpy as np

    pixels = _as_float_image(image, max_value)  # NumPy: one thread, however large the image
    colour, alpha = (pixels[..., :-1], pixels[..., -1]) if pixels.shape[2] in (2, 4) else (pixels, None)
    grey = colour[..., 0] if colour.shape[2] == 1 else colour @ np.array([0.299, 0.587, 0.114], np.float32)
    if alpha is not None:
        if alpha.sum() == 0:
            raise NoInkError("no ink: the image is fully transparent; draw a digit")
        ink_grey = (alpha * grey).sum() / alpha.sum()  # the colour of what is drawn
        paper = 1.0 if ink_grey < 0.5 else 0.0
        grey = alpha * grey + (1 - alpha) * np.float32(paper)
    paper = np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))
    ink = paper - grey if paper - grey.min() > grey.max() - paper else grey - paper  # light paper: dark ink
    return torch.from_numpy(np.maximum(ink, 0, dtype=np.float32))


def mnist_style(image, *, max_value: float | None = None) -> torch.Tensor:
    """Any image of one digit as MNIST made its digits: ink cropped, scaled into 20 x 20, centred by mass in 28 x 28.

    Returns float32 `[28, 28]` in [0, 1], white on black; a blank image raises `NoInkError`.
    """
    ink = ink_on_black(image, max_value=max_value)
    peak = float(ink.max())
    if peak < MIN_INK_CONTRAST:
        raise NoInkError(f"no ink: the image is blank (no pixel differs from the paper by {MIN_INK_CONTRAST:.0%} "
                         "of the full range); draw a digit")
    rows, columns = torch.nonzero(ink * 510 >= peak, as_tuple=True)  # at least half an 8-bit grey level
    crop = ink[int(rows.min()) : int(rows.max()) + 1, int(columns.min()) : int(columns.max()) + 1]
    scale = MNIST_BOX / max(crop.shape)
    size = tuple(max(1, int(side * scale + 0.5)) for side in crop.shape)
    if size != tuple(crop.shape):
        crop = torch.nn.functional.interpolate(crop[None, None], size=size, mode="bilinear",
                                               antialias=True, align_corners=False)[0, 0].clamp_(min=0)
    crop = crop / crop.max()
    height, width = crop.shape
    mass = crop.sum()
    centre_row = float((crop.sum(1) * torch.arange(height)).sum() / mass)
    centre_column = float((crop.sum(0) * torch.arange(width)).sum() / mass)
    top = min(max(math.floor(MNIST_CENTRE - centre_row + 0.5), 0), MNIST_SIDE - height)
    left = min(max(math.floor(MNIST_CENTRE - centre_column + 0.5), 0), MNIST_SIDE - width)
    out = torch.zeros(MNIST_SIDE, MNIST_SIDE)
    out[top : top + height, left : left + width] = crop
    return out
