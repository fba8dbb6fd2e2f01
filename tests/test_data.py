import gzip
import hashlib
import socket

import pytest
import torch

from mnist_guide import data
from mnist_guide.data import MnistDataError, make_loaders, mnist_tensors, prepare_mnist
from mnist_guide.runtime import data_dir

RAW = data_dir() / "MNIST" / "raw"


def _tree_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.gz"))}


@pytest.fixture(scope="module", autouse=True)
def committed_data_is_untouched():
    before = _tree_digest(RAW)
    yield
    assert _tree_digest(RAW) == before, "a test changed data/"


def test_committed_files_match_their_checksums():
    for spec in data.MNIST_FILES.values():
        assert hashlib.sha256((RAW / f"{spec.name}.gz").read_bytes()).hexdigest() == spec.gz_sha256


def test_tensors_have_the_documented_shapes_and_types():
    images, labels = mnist_tensors(train=True)
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    test_images, test_labels = mnist_tensors(train=False)
    assert test_images.shape == (10000, 1, 28, 28) and test_labels.shape == (10000,)


def test_label_counts_match_the_published_ones():
    _, train_labels = mnist_tensors(train=True)
    _, test_labels = mnist_tensors(train=False)
    assert torch.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_normalisation_constants_are_the_training_set_statistics():
    pixels, _ = mnist_tensors(train=True, normalize=False)
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert round(pixels.mean().item(), 4) == data.MNIST_MEAN
    assert round(pixels.std().item(), 4) == data.MNIST_STD
    normalised, _ = mnist_tensors(train=True)
    assert abs(normalised.mean().item()) < 1e-3 and abs(normalised.std().item() - 1) < 1e-3


def test_prepare_decompresses_into_torchvision_layout(mnist_copy):
    root = prepare_mnist(mnist_copy)
    for spec in data.MNIST_FILES.values():
        raw = root / "MNIST" / "raw" / spec.name
        assert raw.stat().st_size == spec.size
        assert hashlib.sha256(raw.read_bytes()).hexdigest() == spec.raw_sha256
    assert not list((root / "MNIST" / "raw").glob("*.tmp"))


def test_prepare_replaces_a_damaged_uncompressed_copy(mnist_copy):
    prepare_mnist(mnist_copy)
    raw = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:100])
    prepare_mnist(mnist_copy)
    assert raw.stat().st_size == data.MNIST_FILES["t10k-labels-idx1-ubyte"].size


def test_a_missing_file_names_it_and_says_how_to_restore(mnist_copy):
    (mnist_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistDataError, match=r"train-labels-idx1-ubyte\.gz: missing.*git checkout -- data/"):
        prepare_mnist(mnist_copy)


def test_a_missing_file_never_reaches_the_network(mnist_copy, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    (mnist_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(MnistDataError):
        mnist_tensors(train=False, root=mnist_copy)


def test_a_truncated_gzip_is_refused(mnist_copy):
    gz = mnist_copy / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(MnistDataError, match=r"train-images-idx3-ubyte\.gz: truncated gzip"):
        prepare_mnist(mnist_copy)
    assert not (gz.parent / "train-images-idx3-ubyte").exists(), "a partial file was written"


def test_a_non_gzip_file_is_refused(mnist_copy):
    gz = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(b"<html>not found</html>")
    with pytest.raises(MnistDataError, match=r"t10k-labels-idx1-ubyte\.gz: not a valid gzip"):
        prepare_mnist(mnist_copy)


def test_a_wrong_idx_header_is_refused(mnist_copy):
    # The test labels stored under the training labels' name: a valid gzip, the wrong count.
    raw = mnist_copy / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte.gz").write_bytes((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(MnistDataError, match=r"train-labels-idx1-ubyte\.gz: IDX header says magic 2049 and shape \(10000,\)"):
        prepare_mnist(mnist_copy)


def test_images_under_a_label_name_are_refused(mnist_copy):
    raw = mnist_copy / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes((raw / "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(MnistDataError, match="magic 2051"):
        prepare_mnist(mnist_copy)


def test_a_flipped_pixel_fails_the_checksum(mnist_copy):
    gz = mnist_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(gz.read_bytes()))
    content[5000] ^= 0xFF
    gz.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(MnistDataError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        mnist_tensors(train=False, root=mnist_copy)


def test_a_recompressed_but_identical_file_is_accepted(mnist_copy):
    gz = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes()), compresslevel=1))
    _, labels = mnist_tensors(train=False, root=mnist_copy)
    assert len(labels) == 10000


def test_loaders_cover_every_sample_once_per_epoch():
    train_loader, test_loader = make_loaders(batch_size=256, test_batch_size=1000)
    assert len(train_loader) == 235 and len(test_loader) == 10
    seen = torch.cat([labels for _, labels in train_loader])
    assert len(seen) == 60000
    assert torch.equal(torch.bincount(seen), torch.bincount(train_loader.labels))
    images, labels = next(iter(test_loader))
    assert images.shape == (1000, 1, 28, 28) and torch.equal(labels, test_loader.labels[:1000])


def test_shuffle_is_seeded_per_epoch():
    images, labels = torch.zeros(10, 1, 28, 28), torch.arange(10)
    loader = data.TensorLoader(images, labels, batch_size=10, shuffle=True, seed=3)
    loader.set_epoch(0)
    first = next(iter(loader))[1]
    loader.set_epoch(1)
    second = next(iter(loader))[1]
    loader.set_epoch(0)
    again = next(iter(loader))[1]
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_drop_last_drops_the_short_batch():
    images, labels = torch.zeros(10, 1, 28, 28), torch.arange(10)
    assert len(data.TensorLoader(images, labels, 4)) == 3
    assert len(data.TensorLoader(images, labels, 4, drop_last=True)) == 2


def test_a_gzip_that_unpacks_past_its_size_is_stopped_there(mnist_copy):
    gz = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes()) + bytes(50_000_000)))
    with pytest.raises(MnistDataError, match="10008 bytes expected once decompressed, more than that"):
        prepare_mnist(mnist_copy)


def test_special_files_are_refused(mnist_copy):
    import os

    gz = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz.unlink()
    os.mkfifo(gz)  # reading a pipe would hang
    with pytest.raises(MnistDataError, match="not a regular file"):
        prepare_mnist(mnist_copy)


def test_shift_images_moves_each_image_by_its_own_offset():
    images = torch.randn(3, 1, 28, 28)
    assert torch.equal(data.shift_images(images, torch.ones(3, 2, dtype=torch.long), 1), images)
    moved = data.shift_images(images, torch.tensor([[0, 2], [2, 0], [1, 1]]), 1)
    assert torch.equal(moved[0, 0, 1:, :-1], images[0, 0, :-1, 1:])  # one row down, one column left
    assert torch.equal(moved[1, 0, :-1, 1:], images[1, 0, 1:, :-1])
    assert torch.equal(moved[2], images[2])


def test_a_fraction_of_an_epoch_sees_that_share_of_the_shuffled_images():
    images, labels = torch.zeros(100, 1, 28, 28), torch.arange(100)
    loader = data.TensorLoader(images, labels, batch_size=10, shuffle=True, seed=1, fraction=0.65)
    seen = torch.cat([batch_labels for _, batch_labels in loader])
    assert len(loader) == 6 and len(seen) == 60 and len(set(seen.tolist())) == 60
    loader.set_epoch(1)
    assert set(torch.cat([batch_labels for _, batch_labels in loader]).tolist()) != set(seen.tolist())
    with pytest.raises(ValueError, match="fraction"):
        data.TensorLoader(images, labels, batch_size=10, fraction=0)


def test_random_affine_repeats_with_the_seed_keeps_black_black_and_does_nothing_at_zero():
    images, _ = data.mnist_tensors(train=False)
    batch = images[:32]
    turn = data.random_affine(2, 10.0, 0.1)
    first = turn(batch, torch.Generator().manual_seed(5))
    assert first.shape == batch.shape and not torch.allclose(first, batch)
    assert torch.equal(first, turn(batch, torch.Generator().manual_seed(5)))
    black = torch.full((4, 1, 28, 28), (0.0 - data.MNIST_MEAN) / data.MNIST_STD)
    torch.testing.assert_close(turn(black, torch.Generator().manual_seed(5)), black)
    torch.testing.assert_close(data.random_affine(0, 0.0, 0.0)(batch, torch.Generator()), batch, atol=1e-4, rtol=0)
