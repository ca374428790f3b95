"""A strict reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type,
``NN`` the number of dimensions), then ``NN`` big-endian uint32 sizes, then the
elements in row-major order, big-endian. The file may be gzip-compressed.

The reader trusts nothing in the file: it checks the payload size the header
declares against the bytes actually present before allocating anything, and it
inflates gzip data in bounded steps, so a forged header can neither exhaust memory
nor make it read past the declared size. Every problem is a :class:`DataError`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from forwardforward.errors import DataError

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

# element type code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"

# NOTE: deflate cannot expand data by more than about 1032:1, so a gzip file of
# n bytes never inflates to more than this many times n (plus a little slack).
MAX_DEFLATE_RATIO = 1032

_CHUNK = 1 << 16  # bytes of compressed input read at a time


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed, into a numpy array.

    The compression is recognised from the content (gzip magic ``1f 8b``), not
    from the file name.

    Args:
        path: The file to read.

    Returns:
        Array of the shape the header declares, in native byte order, with the
        dtype of the header's element type (``uint8`` for MNIST). Writable.

    Raises:
        DataError: The path is missing or a directory, the file is unreadable, its
            magic number is wrong, its header declares more or fewer elements than
            the file holds, or its gzip stream is truncated or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an IDX file")

    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            if fh.read(2) == GZIP_MAGIC:
                fh.seek(0)
                return _read_stream(_Inflater(fh, path), path, max_payload=_gzip_bound(size))
            fh.seek(0)
            return _read_stream(_RawReader(fh), path, max_payload=None, file_size=size)
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err


def write_idx(path: str | os.PathLike, x: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``x`` as an IDX file, gzip-compressed when ``compress``.

    Args:
        path: The file to write.
        x: An array with at least one dimension, of a dtype in :data:`IDX_DTYPES`.
        compress: Gzip the file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: ``x`` has no dimension, or a dtype IDX cannot hold.
    """
    x = np.asarray(x)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(x.dtype.newbyteorder("="))
    if code is None or x.ndim == 0:
        raise DataError(f"cannot write a {x.dtype} array of shape {x.shape} as IDX")

    header = struct.pack(f">HBB{x.ndim}I", 0, code, x.ndim, *x.shape)
    data = header + x.astype(IDX_DTYPES[code], copy=False).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def _gzip_bound(compressed_size: int) -> int:
    """Most bytes a gzip file of ``compressed_size`` bytes can inflate to."""
    return compressed_size * MAX_DEFLATE_RATIO + 1024


def _read_stream(
    src: _RawReader | _Inflater, path: Path, *, max_payload: int | None, file_size: int = 0
) -> np.ndarray:
    """Parse header and payload from ``src``; see :func:`read_idx`."""
    dtype, dims = _read_header(src, path)
    header_size = 4 + 4 * len(dims)
    payload = math.prod(dims) * dtype.itemsize
    shape = "x".join(map(str, dims))

    # check the declared size against what the file can hold, before allocating
    if max_payload is None and payload != file_size - header_size:
        raise DataError(
            f"{path}: header declares {shape} elements ({payload} bytes) but the file "
            f"holds {file_size - header_size} bytes after the header"
        )
    if max_payload is not None and payload > max_payload:
        raise DataError(
            f"{path}: header declares {shape} elements ({payload} bytes), more than a "
            f"gzip file of this size can hold; the file is corrupt"
        )

    buf = src.read_exact(payload)
    if len(buf) < payload:
        raise DataError(
            f"{path}: truncated, holds {len(buf)} of the {payload} data bytes its header "
            f"declares ({shape})"
        )
    if src.read_exact(1):
        raise DataError(f"{path}: holds more data than its header declares ({shape})")

    x = np.frombuffer(buf, dtype=dtype).reshape(dims)
    return x.astype(dtype.newbyteorder("="), copy=False)


def _read_header(src: _RawReader | _Inflater, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """Read the magic number and the dimension sizes."""
    magic = bytes(src.read_exact(4))
    if len(magic) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(magic)} bytes)")

    zero, code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{magic.hex()}, expected "
            f"0x0000TTNN with element type TT in "
            f"{{{', '.join(f'{c:02x}' for c in IDX_DTYPES)}}} and NN >= 1 dimensions)"
        )

    raw = bytes(src.read_exact(4 * ndim))
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: truncated inside its header ({ndim} dimensions declared)")
    return IDX_DTYPES[code], struct.unpack(f">{ndim}I", raw)


class _RawReader:
    """Reads an uncompressed file; its size was checked before any large read."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def read_exact(self, n: int) -> bytearray:
        """Read ``n`` bytes, fewer only at the end of the file."""
        buf = bytearray(n)
        got = self._fh.readinto(buf)
        del buf[got:]
        return buf


class _Inflater:
    """Inflates a gzip file (one or more members) in bounded steps.

    Output is produced only as requested, so a stream that would inflate to more
    than the header declares is noticed after one extra byte, not after it fills
    memory.
    """

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self._fh = fh
        self._path = path
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""  # compressed input handed over but not yet consumed

    def read_exact(self, n: int) -> bytearray:
        """Inflate ``n`` bytes, fewer only where the last gzip member ends the file."""
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        while got < n:
            data = self._next_input()
            if data is None:
                break
            try:
                piece = self._z.decompress(data, n - got)
            except zlib.error as err:
                raise DataError(f"{self._path}: corrupt gzip data ({err})") from err
            if not piece and not self._z.eof and len(self._z.unconsumed_tail) == len(data):
                raise DataError(f"{self._path}: corrupt gzip data (no progress)")
            self._tail = self._z.unconsumed_tail
            view[got : got + len(piece)] = piece
            got += len(piece)
        view.release()
        del out[got:]
        return out

    def _next_input(self) -> bytes | None:
        """Compressed bytes to feed next, or None at a clean end of the file."""
        if self._z.eof:
            rest = self._z.unused_data
            if len(rest) < len(GZIP_MAGIC):
                rest += self._fh.read(_CHUNK)
            if not rest:
                return None
            if not rest.startswith(GZIP_MAGIC):
                raise DataError(f"{self._path}: has trailing bytes after its gzip data")
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next member
            return rest
        if self._tail:
            return self._tail
        data = self._fh.read(_CHUNK)
        if not data:
            raise DataError(f"{self._path}: truncated gzip file (the stream ends early)")
        return data
