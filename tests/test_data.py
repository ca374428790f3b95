"""Loading data sets: where files are found, what comes back, and each error's message."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from forwardforward.data import DATA_ENV, DATASETS, Dataset, load_dataset, resolve_data_dir
from forwardforward.errors import DataError
from forwardforward.idx import write_idx

MNIST_DIR = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST folder absent")

# label counts of digits 0..9, from the README beside the shared MNIST files
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


@pytest.fixture
def small_set(tmp_path):
    """A folder with the four files of a tiny MNIST-like set: 5x4 images, 8 train, 3 test."""
    rng = np.random.default_rng(1)
    arrays = {
        IMAGES: rng.integers(0, 256, (8, 5, 4), dtype=np.uint8),
        LABELS: np.array([0, 1, 2, 3, 4, 5, 6, 9], dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (3, 5, 4), dtype=np.uint8),
        TEST_LABELS: np.array([7, 8, 9], dtype=np.uint8),
    }
    d = tmp_path / "set"
    d.mkdir()
    for stem, x in arrays.items():
        write_idx(d / f"{stem}.gz", x, compress=True)
    return d, arrays


def _load(d: Path) -> Dataset:
    return load_dataset("mnist", d, download=False, progress=False)


# --- where the data is looked up -------------------------------------------------------------

def test_resolve_data_dir_prefers_the_argument_then_the_env_var_then_the_cache(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert resolve_data_dir("mnist", tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir("fashion-mnist") == tmp_path / "env" / "fashion-mnist"

    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir("mnist") == tmp_path / "xdg" / "forwardforward" / "mnist"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir("mnist") == tmp_path / "home" / ".cache" / "forwardforward" / "mnist"


def test_load_dataset_reads_from_the_env_var_folder(small_set, monkeypatch):
    d, arrays = small_set
    root = d.parent / "root"
    root.mkdir()
    shutil.copytree(d, root / "mnist")
    monkeypatch.setenv(DATA_ENV, str(root))

    ds = load_dataset("mnist", download=False)

    assert ds.y_train.tolist() == arrays[LABELS].tolist()


@pytest.mark.parametrize("call", [load_dataset, resolve_data_dir])
def test_unknown_data_set_name_lists_the_known_ones(call):
    with pytest.raises(DataError, match="unknown data set 'cifar'") as err:
        call("cifar")
    assert all(name in str(err.value) for name in DATASETS)


# --- what comes back -------------------------------------------------------------------------

def test_load_dataset_scales_uint8_pixels_by_255_and_keeps_labels(small_set):
    d, arrays = small_set

    ds = _load(d)

    assert ds.name == "mnist" and ds.image_shape == (5, 4) and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.x_train.is_contiguous()
    assert ds.y_train.dtype == torch.int64 and ds.num_features == 20
    x = torch.from_numpy(arrays[TEST_IMAGES].reshape(3, 20).astype(np.float64) / 255)
    torch.testing.assert_close(ds.x_test.double(), x, rtol=0, atol=3e-8)
    assert ds.y_test.tolist() == [7, 8, 9]


def test_load_dataset_reads_raw_files_like_gzipped_ones(small_set):
    d, _ = small_set
    raw = d.parent / "raw"
    raw.mkdir()
    for f in d.iterdir():
        (raw / f.stem).write_bytes(gzip.decompress(f.read_bytes()))

    a, b = _load(d), _load(raw)

    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_digits_are_padded_with_two_blank_rows_so_the_label_slots_cover_no_ink():
    raw = load_digits().data  # (1797, 64) in 0..16
    assert (raw[:, :8] > 0).any()  # why: the first row of a digit has ink

    ds = load_dataset("digits")

    assert ds.image_shape == (10, 8) and ds.num_features == 80
    x = torch.cat([ds.x_train, ds.x_test])  # (1797, 80)
    assert torch.all(x[:, :16] == 0)
    assert x.min() == 0 and x.max() == 1
    rows = {tuple(r) for r in (x[:, 16:] * 16).round().int().tolist()}
    assert rows == {tuple(r) for r in raw.astype(int).tolist()}


def test_digits_split_is_1437_360_stratified_and_deterministic():
    a, b = load_dataset("digits"), load_dataset("digits")

    assert (len(a.x_train), len(a.x_test)) == (1437, 360)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    counts = np.bincount(load_digits().target)
    expected = counts * 360 / 1797
    assert np.all(np.abs(a.y_test.bincount().numpy() - expected) < 1)


def test_dataset_rejects_labels_that_do_not_match_the_images():
    x = torch.zeros(4, 6)
    with pytest.raises(DataError, match=r"train labels: expected int64 of shape \(4,\)"):
        Dataset("t", x, torch.zeros(3, dtype=torch.int64), x, torch.zeros(4, dtype=torch.int64),
                image_shape=(2, 3))
    with pytest.raises(DataError, match=r"test images: expected float32 of shape \(N, 6\)"):
        Dataset("t", x, torch.zeros(4, dtype=torch.int64), x.double(),
                torch.zeros(4, dtype=torch.int64), image_shape=(2, 3))


# --- each error names the file and the fix ---------------------------------------------------

def _assert_one_line_naming(err, path, *words):
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert all(w in msg for w in words), msg


def test_a_truncated_gz_file_is_named_with_the_fix(small_set):
    d, _ = small_set
    path = d / f"{IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:40])

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, path, "truncated", "delete it", "--data-dir")


def test_a_wrong_magic_number_is_named_with_the_fix(small_set):
    d, _ = small_set
    path = d / f"{LABELS}.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x10\x01" + bytes(12)))

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, path, "magic number 0x00001001", "delete it")


def test_dimensions_that_disagree_with_the_file_size_are_named(small_set):
    d, _ = small_set
    (d / f"{TEST_IMAGES}.gz").unlink()
    path = d / TEST_IMAGES  # raw: 3x5x4 declared, 59 bytes present
    path.write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x03\x00\x00\x00\x05\x00\x00\x00\x04"
                     + bytes(59))

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, path, "(60 bytes)", "holds 59 bytes")


def test_image_and_label_counts_that_differ_name_both_files(small_set):
    d, _ = small_set
    write_idx(d / f"{LABELS}.gz", np.zeros(7, np.uint8), compress=True)

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, d / f"{IMAGES}.gz", "8 images", "7 labels", str(d / LABELS))


def test_a_label_outside_0_to_9_is_named_with_its_index(small_set):
    d, _ = small_set
    write_idx(d / f"{TEST_LABELS}.gz", np.array([1, 10, 2], np.uint8), compress=True)

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, d / f"{TEST_LABELS}.gz", "label 10 at index 1", "0..9")


def test_a_labels_file_in_place_of_images_is_rejected(small_set):
    d, _ = small_set
    write_idx(d / f"{IMAGES}.gz", np.zeros(8, np.uint8), compress=True)

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, d / f"{IMAGES}.gz", "expected uint8 images (N, H, W)")


def test_a_missing_file_without_download_says_what_to_fetch_and_where(small_set):
    d, _ = small_set
    (d / f"{TEST_LABELS}.gz").unlink()

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, d, f"{TEST_LABELS}.gz not found", "fetch", "--data-dir")
    assert f"{IMAGES}.gz" not in str(err.value)


def test_a_directory_where_a_file_is_expected_is_named(small_set):
    d, _ = small_set
    (d / f"{LABELS}.gz").unlink()
    (d / f"{LABELS}.gz").mkdir()

    with pytest.raises(DataError) as err:
        _load(d)
    _assert_one_line_naming(err, d / f"{LABELS}.gz", "is a directory")


def test_a_file_given_as_the_data_folder_is_named(small_set):
    d, _ = small_set

    with pytest.raises(DataError) as err:
        _load(d / f"{LABELS}.gz")
    _assert_one_line_naming(err, d / f"{LABELS}.gz", "is a file", "--data-dir")


# --- real MNIST ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", MNIST_DIR, download=False, progress=False)


@needs_mnist
def test_real_mnist_has_60000_10000_samples_with_the_published_label_counts(mnist):
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.image_shape == (28, 28)
    assert mnist.y_train.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert mnist.y_test.bincount().tolist() == MNIST_TEST_COUNTS
    assert mnist.x_train.min() == 0 and mnist.x_train.max() == 1
    assert mnist.x_test.min() == 0 and mnist.x_test.max() == 1


@needs_mnist
def test_real_mnist_is_blank_in_the_first_10_pixels_where_the_label_goes(mnist):
    assert torch.all(mnist.x_train[:, :10] == 0) and torch.all(mnist.x_test[:, :10] == 0)


@needs_mnist
def test_real_mnist_raw_copy_loads_identically(tmp_path, mnist):
    for f in MNIST_DIR.glob("*-ubyte.gz"):
        with gzip.open(f) as src, open(tmp_path / f.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)

    raw = load_dataset("mnist", tmp_path, download=False)

    assert torch.equal(raw.x_train, mnist.x_train) and torch.equal(raw.y_train, mnist.y_train)
    assert torch.equal(raw.x_test, mnist.x_test) and torch.equal(raw.y_test, mnist.y_test)
