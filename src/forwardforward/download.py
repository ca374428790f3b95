"""Fetching the MNIST-family IDX files from public mirrors, checked by SHA-256.

Each file is streamed into a temporary file beside its destination while its
SHA-256 is computed; only a file whose digest is in :data:`SHA256` is renamed into
place, so an interrupted or tampered download never leaves a file that looks
complete. Mirrors are tried in order; the environment variable
``FORWARDFORWARD_MIRRORS`` (comma-separated base URLs, ``{name}`` replaced by the
data set name) replaces the built-in list, e.g. to use a local copy.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from forwardforward.errors import DataError

__all__ = ["MIRRORS", "MIRRORS_ENV", "SHA256", "download_files", "mirrors_for", "offline_hint"]

log = logging.getLogger(__name__)

MIRRORS_ENV = "FORWARDFORWARD_MIRRORS"

# base URLs tried in order; a file's URL is the base followed by its name
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

# Accepted SHA-256 digests of each .gz file; the first is that of the published file.
# NOTE: the MNIST digests are those the public mirrors serve (pinned alike by many
# projects); the second MNIST digest of each file is that of a re-compressed copy
# with identical content (same SHA-256 once decompressed), kept so such a copy can be
# served from a local mirror. The Fashion-MNIST digests are pinned alike in two
# independent public projects; the official repository itself lists only MD5s.
SHA256: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "71524e2cd1ad2968737f7f2f2ff69cbfc32df8ccddff51593f7cb2d4e0eb5b64",
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "fe03b8bd7915f70bf5aa08be480aa413fbd85afcaa58b35d230d335f284fd88e",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "5634745efa576a17e7d4cf5cd9d09123c75e6538e5114267c2d156edaf519341",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ae18e77e031ccde52407f794d123116439864147d33ac992975f85dd4dc42af6",
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (
            "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        ),
        "train-labels-idx1-ubyte.gz": (
            "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        ),
    },
}

MAX_DOWNLOAD_BYTES = 64 << 20  # the largest file is ~26 MB; a mirror sending more is wrong
_CHUNK = 1 << 16


class _MirrorFailed(Exception):
    """One mirror could not deliver a file; the next one is tried."""


def mirrors_for(name: str) -> tuple[str, ...]:
    """Base URLs to try for data set ``name``, from the environment or :data:`MIRRORS`.

    Args:
        name: A data set name with an entry in :data:`MIRRORS`.

    Returns:
        Base URLs, each ending in ``/``, in the order to try them.
    """
    env = os.environ.get(MIRRORS_ENV, "")
    bases = [b.strip() for b in env.split(",") if b.strip()] or list(MIRRORS[name])
    return tuple(b.replace("{name}", name).rstrip("/") + "/" for b in bases)


def offline_hint(name: str, directory: Path, filenames: Sequence[str]) -> str:
    """The one-line instruction for getting ``filenames`` without this downloader."""
    base = mirrors_for(name)[0]
    return (
        f"fetch {', '.join(filenames)} from {base} and put them in {directory}, "
        f"or pass --data-dir pointing at a folder that holds them"
    )


def download_files(
    name: str,
    directory: str | os.PathLike,
    filenames: Sequence[str],
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> list[Path]:
    """Download ``filenames`` of data set ``name`` into ``directory``, checking SHA-256.

    Args:
        name: A data set with entries in :data:`SHA256` and :data:`MIRRORS`.
        directory: Where the files go; created if absent.
        filenames: Names of the ``.gz`` files to fetch.
        progress: Show a tqdm bar per file.
        timeout: Seconds to wait for a mirror to connect or send data.

    Returns:
        The paths written, in the order of ``filenames``.

    Raises:
        DataError: No mirror delivered a file (the message says how to fetch the
            files by hand), or a file's digest is not the expected one (the partial
            file is deleted).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the data folder {directory} ({err}); "
                        f"pass --data-dir pointing at a writable folder") from err

    bases = mirrors_for(name)
    paths = []
    for i, filename in enumerate(filenames):
        failures = []
        for base in bases:
            try:
                paths.append(_fetch(base + filename, directory / filename,
                                    SHA256[name][filename], progress=progress,
                                    timeout=timeout))
                break
            except _MirrorFailed as why:
                log.warning("%s: %s", base + filename, why)
                failures.append(f"{base + filename}: {why}")
        else:
            raise DataError(f"could not download {name} ({'; '.join(failures)}); "
                            f"{offline_hint(name, directory, filenames[i:])}")
    return paths


def _fetch(url: str, dest: Path, sha256: Sequence[str], *, progress: bool,
           timeout: float) -> Path:
    """Stream ``url`` to a temporary file, check its digest, then rename it to ``dest``."""
    request = urllib.request.Request(url, headers={"User-Agent": "forwardforward"})
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(request, out, dest.name, progress=progress, timeout=timeout)

        # compare before the rename, so a bad file never takes the final name
        if digest not in sha256:
            raise DataError(
                f"{dest.name} downloaded from {url} fails its checksum: SHA-256 {digest}, "
                f"expected {' or '.join(sha256)}; it was deleted, try again or set "
                f"{MIRRORS_ENV} to another mirror"
            )
        os.replace(tmp, dest)
        log.info("downloaded %s (SHA-256 verified)", dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def _stream(request: urllib.request.Request, out, label: str, *, progress: bool,
            timeout: float) -> str:
    """Copy the response body of ``request`` to ``out``; return its SHA-256 hex digest."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=label,
                      disable=not progress, leave=False) as bar:
                written = 0
                while chunk := resp.read(_CHUNK):
                    written += len(chunk)
                    if written > MAX_DOWNLOAD_BYTES:
                        raise _MirrorFailed(f"sent more than {MAX_DOWNLOAD_BYTES} bytes")
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and written != total:
                raise _MirrorFailed(f"sent {written} of the {total} bytes it announced")
    except urllib.error.HTTPError as err:
        raise _MirrorFailed(f"HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise _MirrorFailed(str(err.reason)) from err
    except (OSError, ValueError, http.client.HTTPException) as err:  # reset, timeout, short
        raise _MirrorFailed(str(err) or type(err).__name__) from err
    return h.hexdigest()
