"""Downloads against a local HTTP server on 127.0.0.1: checksums, fallbacks, offline advice."""

import functools
import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from forwardforward import download
from forwardforward.data import load_dataset
from forwardforward.errors import DataError
from forwardforward.idx import write_idx

MNIST_DIR = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist"
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/short/<file>`` promises more bytes than it sends."""

    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/short/"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + bytes(50))
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def offline_env(monkeypatch):
    """No proxy may route 127.0.0.1 elsewhere; no mirror list from the caller's shell."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", download.MIRRORS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def serve(offline_env):
    """Start a server on 127.0.0.1 (port 0) for a folder; return (base URL, request log)."""
    servers = []

    def start(root: Path) -> tuple[str, list[str]]:
        handler = type("H", (_Handler,), {"requests": []})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
        )
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler.requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A folder tmp/www/good/ with small valid MNIST-named IDX .gz files, checksums injected."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 4, 3), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(12, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 4, 3), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([9, 8, 7, 0, 1, 2], dtype=np.uint8),
    }
    good = tmp_path / "www" / "good"
    good.mkdir(parents=True)
    sums = {}
    for name, x in arrays.items():
        path = write_idx(good / name, x, compress=True)
        sums[name] = (hashlib.sha256(path.read_bytes()).hexdigest(),)
    monkeypatch.setitem(download.SHA256, "mnist", sums)
    return tmp_path / "www", arrays


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_dataset_downloads_verifies_and_loads_missing_files(tmp_path, serve, mirror,
                                                                 monkeypatch):
    root, arrays = mirror
    base, requests = serve(root)
    monkeypatch.setenv(download.MIRRORS_ENV, f"{base}/good/")
    dest = tmp_path / "data"

    ds = load_dataset("mnist", dest, progress=False)

    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # no .part left over
    assert sorted(requests) == sorted(f"/good/{f}" for f in FILES)
    expected = arrays["train-images-idx3-ubyte.gz"].reshape(12, 12) / 255.0
    torch.testing.assert_close(ds.x_train, torch.from_numpy(expected).float())
    assert ds.y_test.tolist() == [9, 8, 7, 0, 1, 2]
    assert ds.image_shape == (4, 3)


def test_load_dataset_downloads_only_the_missing_files(tmp_path, serve, mirror, monkeypatch):
    root, _ = mirror
    base, requests = serve(root)
    monkeypatch.setenv(download.MIRRORS_ENV, f"{base}/good/")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / FILES[0]).write_bytes((root / "good" / FILES[0]).read_bytes())

    load_dataset("mnist", dest, progress=False)

    assert sorted(requests) == sorted(f"/good/{f}" for f in FILES[1:])


def test_download_with_a_wrong_checksum_raises_and_leaves_no_file(tmp_path, serve, mirror,
                                                                  monkeypatch):
    root, _ = mirror
    base, _ = serve(root)
    monkeypatch.setenv(download.MIRRORS_ENV, f"{base}/good/")
    actual = download.SHA256["mnist"][FILES[1]][0]
    monkeypatch.setitem(download.SHA256["mnist"], FILES[1], ("0" * 64,))
    dest = tmp_path / "data"

    with pytest.raises(DataError) as err:
        download.download_files("mnist", dest, [FILES[1]], progress=False)

    msg = str(err.value)
    assert FILES[1] in msg and "0" * 64 in msg and actual in msg and "\n" not in msg
    assert list(dest.iterdir()) == []


def test_download_falls_back_to_the_next_mirror_after_a_404(tmp_path, serve, mirror,
                                                            monkeypatch):
    root, _ = mirror
    base, requests = serve(root)
    monkeypatch.setenv(download.MIRRORS_ENV, f"{base}/missing/,{base}/good/")

    paths = download.download_files("mnist", tmp_path / "data", [FILES[3]], progress=False)

    assert requests == [f"/missing/{FILES[3]}", f"/good/{FILES[3]}"]
    assert paths == [tmp_path / "data" / FILES[3]]
    assert paths[0].read_bytes() == (root / "good" / FILES[3]).read_bytes()


def test_download_falls_back_after_a_mirror_cuts_the_transfer_short(tmp_path, serve, mirror,
                                                                    monkeypatch):
    root, _ = mirror
    base, requests = serve(root)
    monkeypatch.setenv(download.MIRRORS_ENV, f"{base}/short/,{base}/good/")
    dest = tmp_path / "data"

    download.download_files("mnist", dest, [FILES[0]], progress=False)

    assert requests == [f"/short/{FILES[0]}", f"/good/{FILES[0]}"]
    assert [p.name for p in dest.iterdir()] == [FILES[0]]


def test_download_with_no_reachable_mirror_says_which_files_to_fetch_from_where(
    tmp_path, offline_env, monkeypatch
):
    base = f"http://127.0.0.1:{_closed_port()}/mnist/"
    monkeypatch.setenv(download.MIRRORS_ENV, base)
    dest = tmp_path / "data"

    with pytest.raises(DataError) as err:
        load_dataset("mnist", dest, progress=False)

    msg = str(err.value)
    assert "\n" not in msg
    assert f"fetch {', '.join(FILES)} from {base} and put them in {dest}" in msg
    assert "--data-dir" in msg
    assert list(dest.iterdir()) == []


def test_mirrors_come_from_the_environment_with_the_name_filled_in(monkeypatch):
    monkeypatch.setenv(download.MIRRORS_ENV, " http://a/{name} , ,http://b/x/ ")

    assert download.mirrors_for("fashion-mnist") == ("http://a/fashion-mnist/", "http://b/x/")

    monkeypatch.delenv(download.MIRRORS_ENV)
    assert download.mirrors_for("mnist") == download.MIRRORS["mnist"]


def test_every_data_set_has_a_mirror_and_a_sha256_for_each_of_its_four_files():
    for name in ("mnist", "fashion-mnist"):
        assert download.MIRRORS[name]
        assert sorted(download.SHA256[name]) == sorted(FILES)
        for digests in download.SHA256[name].values():
            assert digests and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST folder absent")
def test_real_mnist_served_locally_passes_the_builtin_checksums(tmp_path, serve, monkeypatch):
    base, _ = serve(MNIST_DIR)
    monkeypatch.setenv(download.MIRRORS_ENV, base)

    ds = load_dataset("mnist", tmp_path / "data", progress=False)

    assert (len(ds.x_train), len(ds.x_test)) == (60000, 10000)
