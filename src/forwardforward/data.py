"""Data sets for Forward-Forward training: MNIST, Fashion-MNIST and scikit-learn's digits.

Every data set comes as a :class:`Dataset` of flattened float32 images in [0, 1]
and int64 labels. MNIST and Fashion-MNIST are read from their four standard IDX
files (gzip-compressed or raw), looked up in this order:

1. the ``data_dir`` argument (the command line's ``--data-dir``), used as is;
2. ``$FORWARDFORWARD_DATA/<name>``;
3. ``$XDG_CACHE_HOME/forwardforward/<name>``, by default ``~/.cache/forwardforward/<name>``.

Missing files are downloaded there (see :mod:`forwardforward.download`). The
``digits`` set ships with scikit-learn, so it works offline.

The FF model writes the one-hot label over the first 10 features of each image.
On MNIST they lie in the blank top row. The 8x8 digits have ink in their top row,
so each digit gets two blank rows on top: 10x8 images, 80 features, the label
slots (features 0..9) all in padding.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from forwardforward.download import download_files, offline_hint
from forwardforward.errors import DataError
from forwardforward.idx import read_idx

__all__ = ["DATASETS", "DATA_ENV", "Dataset", "load_dataset", "read_idx", "resolve_data_dir"]

log = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "fashion-mnist")
DATA_ENV = "FORWARDFORWARD_DATA"

# split -> (images file, labels file), without the optional .gz
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DIGITS_TEST_SIZE = 360  # of 1797; stratified, so 36 (+-1) of each digit
DIGITS_SEED = 0
DIGITS_PAD_ROWS = 2  # blank rows on top, so the 10 label features cover no ink

_REPAIR = "delete it to download it again, or pass --data-dir pointing at an intact copy"


@dataclass(frozen=True, eq=False)  # tensors have no boolean ==
class Dataset:
    """A labelled image data set split into train and test, images flattened.

    Attributes:
        name: One of :data:`DATASETS`.
        x_train: Training images, float32 in [0, 1], contiguous, shape (N, D).
        y_train: Training labels, int64 in 0..num_classes-1, shape (N,).
        x_test: Test images, float32 in [0, 1], shape (M, D).
        y_test: Test labels, int64, shape (M,).
        image_shape: (H, W) of one image, with H * W == D.
        num_classes: Number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple[int, int]
    num_classes: int = 10

    def __post_init__(self) -> None:
        H, W = self.image_shape
        for split, x, y in (("train", self.x_train, self.y_train),
                            ("test", self.x_test, self.y_test)):
            if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != H * W:
                raise DataError(f"{self.name} {split} images: expected float32 of shape "
                                f"(N, {H * W}), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(f"{self.name} {split} labels: expected int64 of shape "
                                f"({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")

    @property
    def num_features(self) -> int:
        """D, the number of features (pixels) per image."""
        return self.x_train.shape[1]


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will hold) the files of data set ``name``.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: A folder given by the user; returned as is when not None.

    Returns:
        ``data_dir``, else ``$FORWARDFORWARD_DATA/<name>``, else
        ``$XDG_CACHE_HOME/forwardforward/<name>`` (``~/.cache`` when unset).

    Raises:
        DataError: ``name`` is not a known data set.
    """
    _check_name(name)
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if root := os.environ.get(DATA_ENV):
        return Path(root).expanduser() / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "forwardforward" / name


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load a data set, downloading MNIST or Fashion-MNIST files that are missing.

    Pixels are scaled to [0, 1] as ``x = u / 255`` for the uint8 IDX images and
    ``x = u / 16`` for the digits (whose pixels are 0..16).

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Folder holding the IDX files; see :func:`resolve_data_dir`.
        download: Fetch missing IDX files from the mirrors.
        progress: Show a progress bar while downloading.

    Returns:
        The data set; MNIST and Fashion-MNIST have 60000 train and 10000 test
        images of 28x28 (D = 784), digits 1437 and 360 images of 10x8 (D = 80).

    Raises:
        DataError: Unknown name, a missing file (with ``download=False`` or no
            network), a malformed file, or files that do not fit together.
    """
    _check_name(name)
    if name == "digits":
        return _load_digits()

    directory = resolve_data_dir(name, data_dir)
    paths = _find_idx_files(name, directory, download=download, progress=progress)
    x_train, y_train = _load_split(*paths["train"])
    x_test, y_test = _load_split(*paths["test"])

    H, W = x_train.shape[1:]
    if x_test.shape[1:] != (H, W):
        raise DataError(f"{paths['test'][0]}: images are {x_test.shape[1:]}, but the "
                        f"training images are {(H, W)}; {_REPAIR}")
    log.info("loaded %s from %s: %d train, %d test images of %dx%d",
             name, directory, len(x_train), len(x_test), H, W)
    return Dataset(name, _to_features(x_train), y_train, _to_features(x_test), y_test,
                   image_shape=(H, W))


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def _find_idx_files(name: str, directory: Path, *, download: bool,
                    progress: bool) -> dict[str, tuple[Path, Path]]:
    """Locate the four IDX files (``.gz`` preferred), downloading missing ones."""
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory}: is a file, expected the folder holding the {name} "
                        f"IDX files; pass --data-dir pointing at that folder")

    found, missing = {}, []
    for stem in (s for pair in IDX_FILES.values() for s in pair):
        for path in (directory / f"{stem}.gz", directory / stem):
            if path.is_dir():
                raise DataError(f"{path}: is a directory, expected the IDX file {stem}; "
                                f"remove it, or pass --data-dir pointing elsewhere")
            if path.is_file():
                found[stem] = path
                break
        else:
            missing.append(stem)

    if missing and not download:
        files = [f"{s}.gz" for s in missing]
        raise DataError(f"{name}: {', '.join(files)} not found in {directory} and downloads "
                        f"are off; {offline_hint(name, directory, files)}")
    if missing:
        log.info("%s: fetching %d missing file(s) into %s", name, len(missing), directory)
        got = download_files(name, directory, [f"{s}.gz" for s in missing], progress=progress)
        found.update(zip(missing, got, strict=True))
    return {split: (found[img], found[lab]) for split, (img, lab) in IDX_FILES.items()}


def _load_split(images_path: Path, labels_path: Path,
                num_classes: int = 10) -> tuple[np.ndarray, torch.Tensor]:
    """Read and cross-check one split: uint8 images (N, H, W) and labels (N,)."""
    images, labels = _read(images_path), _read(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: holds {images.dtype} data of shape {images.shape}, "
                        f"expected uint8 images (N, H, W); {_REPAIR}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{labels_path}: holds {labels.dtype} data of shape {labels.shape}, "
                        f"expected uint8 labels (N,); {_REPAIR}")

    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels; delete both to download them again")
    if len(labels) and labels.max() >= num_classes:
        i = int(np.argmax(labels >= num_classes))
        raise DataError(f"{labels_path}: label {labels[i]} at index {i} is outside "
                        f"0..{num_classes - 1}; {_REPAIR}")
    return images, torch.from_numpy(labels).to(torch.int64)


def _read(path: Path) -> np.ndarray:
    """:func:`read_idx`, with the repair hint added to its errors."""
    try:
        return read_idx(path)
    except DataError as err:
        raise DataError(f"{err}; {_REPAIR}") from err


def _to_features(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) -> float32 features (N, H*W) in [0, 1]."""
    N, H, W = images.shape
    x = torch.from_numpy(images).reshape(N, H * W)  # (N, D) uint8
    return x.to(torch.float32).div_(255.0)


def _load_digits() -> Dataset:
    """scikit-learn's 8x8 digits, padded to 10x8, split 1437/360 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.pad(bunch.images, ((0, 0), (DIGITS_PAD_ROWS, 0), (0, 0)))  # (1797, 10, 8)
    N, H, W = images.shape
    x = (images.reshape(N, H * W) / 16.0).astype(np.float32)  # (N, 80) in [0, 1]
    y = bunch.target.astype(np.int64)

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SEED
    )
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)]
    return Dataset("digits", *t, image_shape=(H, W))
