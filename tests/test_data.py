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
from genforge.data.images import load_image_folder, load_image_splits, random_crop_flip
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


# ---------------------------------------------------------------------------------------
# the one image loader (load_image_splits): one split policy for every image recipe

_IMAGE_RECIPES = ("image-classify", "image-generate", "sequence-classify")


def _recipe_splits(name: str, overrides: dict) -> dict:
    from genforge.config import make_config
    from genforge.recipes import get_recipe

    r = get_recipe(name)
    cfg = make_config(r, overrides)
    if name == "image-classify":
        return r._splits(cfg)[0]
    if name == "image-generate":
        return r.splits(cfg)[0]
    return r._splits(cfg)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _fingerprint(splits: dict) -> dict:
    return {k: (len(x), _digest(x), _digest(y)) for k, (x, y) in splits.items()}


# sha256 prefixes of (images, labels) of the Fashion-MNIST splits as image-classify and
# image-generate cut them before the loaders were merged; the benchmark tables were measured
# on exactly these splits (SPLIT_SEED 1234, validation = carve of the 60k training split)
_FASHION_BEFORE = {
    0: {"train": (54000, "d3b948ed4a4ba39c", "31bed864afbaf986"),
        "val": (6000, "e8070642d79bc43d", "cfc6a7b9cd9272d9"),
        "test": (10000, "c867c93ff9536059", "d51d859896c55775")},
    256: {"train": (230, "22388a820a61a2a3", "6ac83bda239bba31"),
          "val": (26, "da9a2d7bb7c406f0", "f20cd3b454944c69"),
          "test": (10000, "c867c93ff9536059", "d51d859896c55775")},
}


@pytest.mark.parametrize("train_limit", [0, 256])
def test_fashion_mnist_splits_are_unchanged_and_shared(train_limit):
    want = _FASHION_BEFORE[train_limit]
    assert _fingerprint(load_image_splits("fashion-mnist", train_limit=train_limit).splits) == want
    for name in _IMAGE_RECIPES:  # sequence-classify now carves validation the same way
        assert _fingerprint(_recipe_splits(name, {"data": "fashion-mnist", "train_limit": train_limit})) == want


def _mnist_test_only(tmp_path, data_root) -> Path:
    """A data folder holding only MNIST's test split, as the offline copy does."""
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (d / f).symlink_to(data_root / "mnist" / f)
    return d.parent


def test_mnist_with_only_its_test_split_is_carved_the_same_for_every_recipe(
        tmp_path, monkeypatch, data_root, capsys):
    monkeypatch.setenv("GENFORGE_DATA", str(_mnist_test_only(tmp_path, data_root)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = _recipe_splits("image-classify", {"data": "mnist"})
    assert {k: len(v[0]) for k, v in first.items()} == {"train": 7200, "val": 800, "test": 2000}
    for name in _IMAGE_RECIPES[1:]:
        assert _fingerprint(_recipe_splits(name, {"data": "mnist"})) == _fingerprint(first), name
    # the training images never appear among the test images
    train = {bytes(x.numpy()) for x in first["train"][0]}
    assert not any(bytes(x.numpy()) in train for x in first["test"][0])
    err = capsys.readouterr().err
    assert err.count("no training split found") == 1, err  # said once, not once per recipe
    assert "train-images-idx3-ubyte.gz" in err and "test_fraction=0.2" in err


def test_digits_are_carved_the_same_for_every_recipe():
    want = _fingerprint(_recipe_splits("image-classify", {"data": "digits"}))
    assert {k: v[0] for k, v in want.items()} == {"train": 1294, "val": 144, "test": 359}
    for name in _IMAGE_RECIPES[1:]:
        assert _fingerprint(_recipe_splits(name, {"data": "digits"})) == want, name


def test_image_classify_test_fraction_sets_the_carve(tmp_path, monkeypatch, data_root):
    sizes = {}
    for frac in (0.2, 0.3):
        sp = _recipe_splits("image-classify", {"data": "digits", "test_fraction": frac})
        sizes[frac] = {k: len(v[0]) for k, v in sp.items()}
        assert sum(sizes[frac].values()) == 1797
    assert sizes[0.2]["test"] == 359 and sizes[0.3]["test"] == 539
    assert sizes[0.3]["train"] < sizes[0.2]["train"]
    # the official Fashion-MNIST test split is never carved
    assert len(_recipe_splits("image-classify", {"data": "fashion-mnist", "train_limit": 64,
                                                 "test_fraction": 0.5})["test"][0]) == 10000
    monkeypatch.setenv("GENFORGE_DATA", str(_mnist_test_only(tmp_path, data_root)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sp = _recipe_splits("image-classify", {"data": "mnist", "test_fraction": 0.3})
    assert {k: len(v[0]) for k, v in sp.items()} == {"train": 6300, "val": 700, "test": 3000}


def test_corrupt_training_file_is_an_error_not_a_fallback(tmp_path, monkeypatch, data_root):
    root = _mnist_test_only(tmp_path, data_root)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (root / "mnist" / f).write_bytes(b"not gzip at all")
    monkeypatch.setenv("GENFORGE_DATA", str(root))
    with pytest.raises(DataError, match="not a readable idx"):
        load_image_splits("mnist")


def test_missing_image_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError) as e:
        load_image_splits("fashion-mnist")
    msg = str(e.value)
    assert "neither its training nor its test split was found" in msg
    assert str(tmp_path / "empty") in msg and "GENFORGE_DATA" in msg
    with pytest.raises(DataError, match="neither a named image dataset"):
        load_image_splits(str(tmp_path / "no-such-folder"))


def test_image_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "flat").mkdir()
    _write_png(tmp_path / "flat" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="no class subfolders"):
        load_image_splits(str(tmp_path / "flat"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="class folders hold no images"):
        load_image_splits(str(tmp_path / "empty"))
    (tmp_path / "two" / "cat").mkdir(parents=True)
    for i in range(2):
        _write_png(tmp_path / "two" / "cat" / f"{i}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="test split is empty"):
        load_image_splits(str(tmp_path / "two"))  # 20% of 2 images rounds to none
    with pytest.raises(DataError, match="test_fraction=1.5"):
        load_image_splits("digits", test_fraction=1.5)


def test_folder_splits_and_channels(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            _write_png(tmp_path / "imgs" / cls / f"{i}.png", np.full((6, 6, 3), 20 * i, np.uint8))
    d = load_image_splits(str(tmp_path / "imgs"), val_fraction=0.25, test_fraction=0.2)
    assert d.classes == ["cat", "dog"] and not d.train_missing
    assert {k: v[0].shape for k, v in d.splits.items()} == {
        "train": (12, 3, 6, 6), "val": (4, 3, 6, 6), "test": (4, 3, 6, 6)}
    grey = load_image_splits(str(tmp_path / "imgs"), channels=1, image_size=4)
    assert grey.splits["train"][0].shape[1:] == (1, 4, 4)
    with pytest.raises(DataError, match="1-channel images but 3-channel"):
        load_image_splits("digits", channels=3)
