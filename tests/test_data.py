"""Dataset lookup, download with sha256 verification (loopback HTTP and file://), and the
errors users see for missing or malformed data."""
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from genforge.data import registry
from genforge.data.cifar import load_cifar10, parse_batch
from genforge.data.idx import read_idx, write_idx
from genforge.data.images import load_image_folder, random_crop_flip
from genforge.data.registry import DataError


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


def test_download_over_loopback_verifies_sha256(http_server, tmp_path):
    root, base = http_server
    payload = b"genforge test payload\n" * 100
    (root / "f.bin").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "ds" / "f.bin"
    assert registry.download(base + "f.bin", dest, good).read_bytes() == payload

    bad_dest = tmp_path / "cache" / "ds" / "g.bin"
    with pytest.raises(DataError, match="sha256 mismatch"):
        registry.download(base + "f.bin", bad_dest, "0" * 64)
    assert not bad_dest.exists()
    assert not [p for p in bad_dest.parent.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_download_file_url_and_archive_member(tmp_path):
    member = b"a positive sentence\n"
    tar_path = tmp_path / "a.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        info = tarfile.TarInfo("rt-polaritydata/rt-polarity.pos")
        info.size = len(member)
        tf.addfile(info, io.BytesIO(member))
    dest = tmp_path / "out" / "rt-polarity.pos"
    registry.download(tar_path.as_uri(), dest, hashlib.sha256(member).hexdigest(),
                      member="rt-polaritydata/rt-polarity.pos")
    assert dest.read_bytes() == member


def test_unreachable_download_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        registry.download((tmp_path / "nope").as_uri(), tmp_path / "x", "0" * 64)


def test_lookup_order_prefers_data_dir(tmp_path, monkeypatch, data_root):
    d = tmp_path / "mine" / "tinyshakespeare"
    d.mkdir(parents=True)
    (d / "input.txt").write_text("x")
    assert registry.find("tinyshakespeare", "input.txt", tmp_path / "mine") == d / "input.txt"
    assert registry.find("tinyshakespeare", "input.txt") == data_root / "tinyshakespeare" / "input.txt"


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError) as e:
        registry.find("fashion-mnist", "train-images-idx3-ubyte.gz")
    msg = str(e.value)
    assert "not found" in msg and str(tmp_path / "empty") in msg and "GENFORGE_DATA" in msg


def test_mnist_train_split_missing_is_explained():
    from genforge.config import make_config
    from genforge.recipes import get_recipe

    recipe = get_recipe("image-classify")
    cfg = make_config(recipe, {"data": "mnist"})
    with pytest.raises(DataError, match="training split is missing"):
        recipe.build(cfg)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset"):
        registry.find("imagenet-22k", "x")


def test_idx_round_trip_and_real_file(tmp_path, data_root):
    x = torch.randint(0, 256, (5, 4, 3), dtype=torch.uint8)
    write_idx(tmp_path / "a.gz", x)
    assert torch.equal(read_idx(tmp_path / "a.gz"), x)
    labels = read_idx(data_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and int(labels.max()) == 9


def test_corrupt_idx_files(tmp_path):
    (tmp_path / "garbage.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable idx"):
        read_idx(tmp_path / "garbage.gz")
    with gzip.open(tmp_path / "magic.gz", "wb") as f:
        f.write(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "magic.gz")
    x = torch.zeros(10, 4, 4, dtype=torch.uint8)
    write_idx(tmp_path / "full.gz", x)
    raw = gzip.decompress((tmp_path / "full.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}


def test_cifar_parser_on_synthetic_archive(tmp_path):
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    batches = {f"data_batch_{i}": _cifar_batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(3, 9)
    with tarfile.open(tar_path, "w:gz") as tf:
        for name, d in batches.items():
            raw = pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    x, y = load_cifar10(tar_path, "train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (20,)
    # channel-major layout: the first 1024 bytes are the red plane of image 0
    assert torch.equal(x[0, 0].flatten(), torch.from_numpy(batches["data_batch_1"][b"data"][0, :1024]))
    assert y[:4].tolist() == batches["data_batch_1"][b"labels"]
    xt, yt = load_cifar10(tar_path, "test")
    assert xt.shape == (3, 3, 32, 32)


def test_cifar_parser_refuses_code_and_bad_shapes():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(DataError, match="not a CIFAR-10"):
        parse_batch(pickle.dumps(Evil()), "evil")
    bad = {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}
    with pytest.raises(DataError, match="expected"):
        parse_batch(pickle.dumps(bad), "bad")


def _write_png(path: Path, arr: np.ndarray):
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_image_folder_and_non_image_file(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            _write_png(tmp_path / "imgs" / cls / f"{i}.png", np.full((6, 5, 3), 40 * i, np.uint8))
    x, y, classes = load_image_folder(tmp_path / "imgs")
    assert classes == ["cat", "dog"] and x.shape == (6, 3, 6, 5) and y.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt is not an image"):
        load_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "notes.txt").unlink()
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="not a readable image"):
        load_image_folder(tmp_path / "imgs")


def test_random_crop_flip_matches_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = random_crop_flip(x, g, pad=1, flip=True)
    g = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 3, (2,), generator=g)
    dx = torch.randint(0, 3, (2,), generator=g)
    mask = torch.rand(2, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for b in range(2):
        ref = padded[b, :, dy[b]:dy[b] + 4, dx[b]:dx[b] + 4]
        if mask[b]:
            ref = ref.flip(-1)
        assert torch.equal(out[b], ref)
