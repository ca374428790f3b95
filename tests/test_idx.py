"""The IDX reader: exact round trips, one clear DataError per defect, and fuzzing."""

import gzip
import hashlib
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardforward.errors import DataError
from forwardforward.idx import IDX_DTYPES, MAX_DEFLATE_RATIO, read_idx, write_idx

MNIST_DIR = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist"

# SHA-256 of the uncompressed original MNIST files (the widely published digests)
MNIST_RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file made by hand from the format's definition."""
    return struct.pack(f">HBB{len(dims)}I", 0, code, len(dims), *dims) + payload


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code", sorted(IDX_DTYPES))
def test_read_idx_round_trips_every_element_type(tmp_path, code, compress):
    rng = np.random.default_rng(code)
    x = (rng.normal(size=(3, 4, 5)) * 100).astype(IDX_DTYPES[code].newbyteorder("="))
    path = write_idx(tmp_path / "x", x, compress=compress)

    y = read_idx(path)

    assert y.dtype == x.dtype and y.dtype.isnative
    np.testing.assert_array_equal(y, x)
    assert y.flags.writeable


def test_write_idx_lays_out_header_and_big_endian_payload_as_the_format_defines(tmp_path):
    x = np.array([[1, 258], [-3, 70000]], dtype=np.int32)

    raw = write_idx(tmp_path / "x", x).read_bytes()

    assert raw == idx_bytes(0x0C, (2, 2), struct.pack(">4i", 1, 258, -3, 70000))


def test_read_idx_recognises_gzip_by_content_not_by_name(tmp_path):
    data = idx_bytes(0x08, (2, 3), bytes(range(6)))
    (tmp_path / "raw.gz").write_bytes(data)
    (tmp_path / "packed").write_bytes(gzip.compress(data))

    a, b = read_idx(tmp_path / "raw.gz"), read_idx(tmp_path / "packed")

    np.testing.assert_array_equal(a, np.arange(6, dtype=np.uint8).reshape(2, 3))
    np.testing.assert_array_equal(b, a)


def test_read_idx_reads_a_gzip_file_of_several_members(tmp_path):
    data = idx_bytes(0x08, (4, 2), bytes(range(8)))
    (tmp_path / "x.gz").write_bytes(gzip.compress(data[:11]) + gzip.compress(data[11:]))

    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz").ravel(), np.arange(8))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "too short"),
        (b"\x00\x00\x08", "too short"),
        (b"\x00\x01\x08\x01" + bytes(8), "magic number 0x00010801"),
        (b"\x00\x00\x07\x01" + bytes(8), "magic number 0x00000701"),
        (b"\x00\x00\x08\x00" + bytes(8), "magic number 0x00000800"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its header"),
        (idx_bytes(0x08, (10, 28, 28), bytes(7839)), "holds 7839 bytes after the header"),
        (idx_bytes(0x08, (10, 28, 28), bytes(7841)), "holds 7841 bytes after the header"),
        (idx_bytes(0x0C, (5,), bytes(5)), "5 elements (20 bytes)"),
    ],
)
def test_read_idx_names_the_defect_of_a_malformed_raw_file(tmp_path, content, words):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)

    with pytest.raises(DataError, match=str(path)) as err:
        read_idx(path)

    assert words in str(err.value) and "\n" not in str(err.value)


def test_read_idx_reports_a_truncated_gzip_file(tmp_path):
    packed = gzip.compress(idx_bytes(0x08, (100, 28, 28), np.arange(78400).astype("u1").tobytes()))
    path = tmp_path / "x.gz"
    path.write_bytes(packed[: len(packed) // 2])

    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_rejects_gzip_data_longer_than_its_header_declares(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (3,), b"abcd")))

    with pytest.raises(DataError, match="more data than its header declares"):
        read_idx(path)


def test_read_idx_rejects_gzip_data_shorter_than_its_header_declares(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (5,), b"abcd")))

    with pytest.raises(DataError, match="truncated, holds 4 of the 5 data bytes"):
        read_idx(path)


def test_read_idx_rejects_a_gzip_stream_with_a_flipped_byte(tmp_path):
    data = idx_bytes(0x08, (64, 64), np.random.default_rng(0).integers(0, 9, 4096, "u1").tobytes())
    packed = bytearray(gzip.compress(data))
    packed[len(packed) // 2] ^= 0xFF
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(packed))

    with pytest.raises(DataError, match="corrupt gzip data|truncated|more data"):
        read_idx(path)


def test_read_idx_rejects_bytes_after_the_gzip_stream(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (2,), b"ab")) + b"junk")

    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)


def test_read_idx_refuses_a_gzip_header_claiming_more_than_the_file_can_hold_before_allocating(
    tmp_path,
):
    # a 4 GB payload declared in a file of a few dozen bytes
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (65536, 65535), b"")))

    tracemalloc.start()
    with pytest.raises(DataError, match="more than a gzip file of this size can hold"):
        read_idx(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert peak < 256 << 10


def test_read_idx_accepts_a_maximally_compressed_file(tmp_path):
    # zeros compress close to deflate's limit, which the size bound must allow
    path = tmp_path / "zeros.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (2000, 2000), bytes(4_000_000)), 9))
    assert path.stat().st_size * MAX_DEFLATE_RATIO > 4_000_000 > path.stat().st_size * 900

    assert read_idx(path).shape == (2000, 2000)


def test_read_idx_rejects_a_missing_path_and_a_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "absent")
    with pytest.raises(DataError, match="is a directory"):
        read_idx(tmp_path)


def test_write_idx_rejects_a_dtype_idx_cannot_hold(tmp_path):
    with pytest.raises(DataError, match="uint16"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))


# --- fuzzing: only DataError, and no allocation beyond what the file can hold ---------------

def _read_bounded(path: Path) -> None:
    """read_idx must return or raise DataError, allocating at most what the file holds."""
    size = path.stat().st_size
    tracemalloc.start()
    try:
        x = read_idx(path)
        assert x.nbytes <= size * MAX_DEFLATE_RATIO
    except DataError as err:
        assert str(path) in str(err) and "\n" not in str(err)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= size * MAX_DEFLATE_RATIO + (2 << 20)


_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(data=st.binary(max_size=300), gz_prefix=st.booleans())
def test_read_idx_raises_only_data_error_on_random_bytes(tmp_path, data, gz_prefix):
    path = tmp_path / "random"
    path.write_bytes((b"\x1f\x8b" if gz_prefix else b"") + data)

    _read_bounded(path)


@st.composite
def mutated_idx_files(draw):
    """A valid small IDX file (maybe gzipped), then a few random edits."""
    code = draw(st.sampled_from(sorted(IDX_DTYPES)))
    dims = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=3)))
    n = int(np.prod(dims)) * IDX_DTYPES[code].itemsize
    data = idx_bytes(code, dims, draw(st.binary(min_size=n, max_size=n)))
    if draw(st.booleans()):
        data = gzip.compress(data)

    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "append", "dim"]))
        if op == "flip" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del buf[draw(st.integers(0, len(buf))):]
        elif op == "append":
            buf += draw(st.binary(min_size=1, max_size=16))
        elif op == "dim" and len(buf) >= 8 and buf[:2] == b"\x00\x00":
            buf[4:8] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
    return bytes(buf)


@_FUZZ
@given(data=mutated_idx_files())
def test_read_idx_raises_only_data_error_on_mutated_valid_files(tmp_path, data):
    path = tmp_path / "mutated"
    path.write_bytes(data)

    _read_bounded(path)


@_FUZZ
@given(data=mutated_idx_files())
def test_read_idx_raises_only_data_error_on_gzipped_mutated_files(tmp_path, data):
    # gzip a mutated raw file: the gzip layer is intact, the IDX inside is not
    path = tmp_path / "mutated.gz"
    path.write_bytes(gzip.compress(data, mtime=0))

    _read_bounded(path)


@_FUZZ
@given(data=mutated_idx_files(), cut=st.integers(1, 40))
def test_read_idx_raises_only_data_error_on_cut_gzip_streams(tmp_path, data, cut):
    # a raw deflate stream cut short: zlib must be stopped, not trusted
    packed = gzip.compress(data, mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: max(2, len(packed) - cut)])

    _read_bounded(path)


# --- real MNIST --------------------------------------------------------------------------------

@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST folder absent")
@pytest.mark.parametrize("stem", sorted(MNIST_RAW_SHA256))
def test_read_idx_returns_the_exact_bytes_of_real_mnist(stem):
    x = read_idx(MNIST_DIR / f"{stem}.gz")
    header = struct.pack(f">HBB{x.ndim}I", 0, 0x08, x.ndim, *x.shape)

    assert hashlib.sha256(header + x.tobytes()).hexdigest() == MNIST_RAW_SHA256[stem]
