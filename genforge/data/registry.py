"""Named datasets: where their files are found, and how they are downloaded and verified.

Lookup order for every file (first hit wins):
  1. `data_dir` given by the caller (`--data-dir`),
  2. `$GENFORGE_DATA`,
  3. the user cache `~/.cache/genforge` (or `$XDG_CACHE_HOME/genforge`),
  4. system locations where Debian's dataset packages install (e.g. `dataset-fashion-mnist`),
  5. download from the canonical URL into the user cache, verified by sha256.
Each location holds one subfolder per dataset: `<root>/<dataset>/<file>`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class DataError(RuntimeError):
    """A dataset is missing, corrupt or malformed; the message says what and how to fix it."""


@dataclass(frozen=True)
class DataFile:
    name: str  # file name inside the dataset folder
    url: str
    sha256: str
    member: str = ""  # when `url` is an archive: the member to extract as `name`


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[DataFile, ...] = ()
    system_dirs: tuple[str, ...] = ()
    notes: str = ""  # shown when a file is missing
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> file names
    classes: tuple[str, ...] = ()  # class names of labelled image datasets, by label id


_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_M30K = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
_RT = "https://www.cs.cornell.edu/people/pabo/movie-review-data/rt-polaritydata.tar.gz"
_CIFAR = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_SHA = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"

_M30K_SHA = {
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}

DATASETS: dict[str, Dataset] = {
    "fashion-mnist": Dataset(
        "fashion-mnist",
        "Zalando Fashion-MNIST: 60k train + 10k test 28x28 grey images, 10 clothing classes",
        (
            DataFile("train-images-idx3-ubyte.gz", _FMNIST + "train-images-idx3-ubyte.gz",
                     "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
            DataFile("train-labels-idx1-ubyte.gz", _FMNIST + "train-labels-idx1-ubyte.gz",
                     "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
            DataFile("t10k-images-idx3-ubyte.gz", _FMNIST + "t10k-images-idx3-ubyte.gz",
                     "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
            DataFile("t10k-labels-idx1-ubyte.gz", _FMNIST + "t10k-labels-idx1-ubyte.gz",
                     "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
        ),
        system_dirs=("/usr/share/dataset-fashion-mnist", "/usr/share/fashion-mnist"),
        notes="Debian users can `apt-get install dataset-fashion-mnist`.",
        classes=("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                 "sneaker", "bag", "ankle-boot"),
        splits={
            "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        },
    ),
    "mnist": Dataset(
        "mnist",
        "MNIST handwritten digits: 60k train + 10k test 28x28 grey images, 10 classes",
        (
            DataFile("train-images-idx3-ubyte.gz", _MNIST + "train-images-idx3-ubyte.gz",
                     "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            DataFile("train-labels-idx1-ubyte.gz", _MNIST + "train-labels-idx1-ubyte.gz",
                     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            DataFile("t10k-images-idx3-ubyte.gz", _MNIST + "t10k-images-idx3-ubyte.gz",
                     "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b"),
            DataFile("t10k-labels-idx1-ubyte.gz", _MNIST + "t10k-labels-idx1-ubyte.gz",
                     "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c"),
        ),
        system_dirs=("/usr/share/dataset-mnist", "/usr/share/mnist"),
        notes=("Offline copies often carry only the MNIST test split (t10k-*); the image "
               "recipes then carve train/test from it (test_fraction). The official training "
               "split must be downloaded (needs internet) or placed in the dataset folder; "
               "`--set data=fashion-mnist` trains on a dataset with both splits."),
        classes=tuple(str(i) for i in range(10)),
        splits={
            "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        },
    ),
    "cifar10": Dataset(
        "cifar10",
        "CIFAR-10: 50k train + 10k test 32x32 colour images, 10 classes (python pickle batches)",
        (DataFile("cifar-10-python.tar.gz", _CIFAR, _CIFAR_SHA),),
    ),
    "digits": Dataset(
        "digits",
        "scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes (no download)",
        classes=tuple(str(i) for i in range(10)),
    ),
    "tinyshakespeare": Dataset(
        "tinyshakespeare",
        "Tiny Shakespeare: 1.1M characters of plays, 65 distinct characters",
        (DataFile("input.txt",
                  "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                  "tinyshakespeare/input.txt",
                  "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
    ),
    "rt-polarity": Dataset(
        "rt-polarity",
        "Movie-review sentence polarity (Pang & Lee): 5,331 positive + 5,331 negative",
        (
            DataFile("rt-polarity.pos", _RT,
                     "4134882974a28d0c7b5151256f0e33a6169984ee7372c279e673f1114f475d58",
                     member="rt-polaritydata/rt-polarity.pos"),
            DataFile("rt-polarity.neg", _RT,
                     "2d11cfbc790f1cd96d78339f41ce53ced1efa83cd22d37d6788fa3fe3d17e2fd",
                     member="rt-polaritydata/rt-polarity.neg"),
        ),
    ),
    "fsdd": Dataset(
        "fsdd",
        "Free Spoken Digit Dataset: 3,000 8 kHz WAV recordings of the digits zero..nine, 6 "
        "speakers (test: indices 0-4 of every speaker and digit)",
        notes="Read and downloaded by genforge.data.audio (a folder fsdd/recordings/*.wav).",
        classes=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    ),
    "multi30k": Dataset(
        "multi30k",
        "Multi30k task 1: English/German/French image captions aligned by line",
        tuple(DataFile(n, _M30K + n, s) for n, s in _M30K_SHA.items()),
    ),
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "genforge"


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    roots: list[Path] = []
    if data_dir:
        roots.append(Path(data_dir))
    if os.environ.get("GENFORGE_DATA"):
        roots.append(Path(os.environ["GENFORGE_DATA"]))
    roots.append(cache_dir())
    return roots


def candidates(name: str, filename: str, data_dir=None) -> list[Path]:
    ds = get(name)
    paths = [root / name / filename for root in search_roots(data_dir)]
    paths += [Path(d) / filename for d in ds.system_dirs]
    return paths


def get(name: str) -> Dataset:
    if name not in DATASETS:
        from genforge.config import did_you_mean

        raise DataError(f"unknown dataset {name!r};{did_you_mean(name, DATASETS)} named datasets: {', '.join(DATASETS)} "
                        "(or pass a path to your own files)")
    return DATASETS[name]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str, member: str = "") -> Path:
    """Download `url` (http, https or file) to `dest`, verifying sha256 before it lands.

    The file is written to a temporary name next to `dest` and renamed only after the
    checksum matches, so a failed or tampered download never leaves a file behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError) as e:
                raise DataError(f"could not download {url}: {e}") from None
        if member:
            tmp_path = _extract_member(tmp_path, member)
        got = sha256_of(tmp_path)
        if got != sha256:
            raise DataError(f"sha256 mismatch for {url}: expected {sha256}, got {got}; "
                            "the file was discarded (a corrupt or changed download)")
        os.replace(tmp_path, dest)
        return dest
    finally:
        for p in {Path(tmp), tmp_path}:
            if p.exists():
                p.unlink()


def _extract_member(archive: Path, member: str) -> Path:
    import tarfile

    out = archive.with_suffix(".member")
    try:
        with tarfile.open(archive) as tf, tf.extractfile(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (tarfile.TarError, KeyError, TypeError) as e:
        raise DataError(f"archive {archive.name} has no usable member {member!r}: {e}") from None
    archive.unlink()
    return out


def find(name: str, filename: str, data_dir=None, download_ok: bool = True) -> Path:
    """Path of `filename` of dataset `name`, downloading it into the cache if needed."""
    ds = get(name)
    tried = candidates(name, filename, data_dir)
    for p in tried:
        if p.is_file():
            return p
    spec = next((f for f in ds.files if f.name == filename), None)
    if spec is not None and download_ok and os.environ.get("GENFORGE_OFFLINE") != "1":
        dest = cache_dir() / name / filename
        try:
            return download(spec.url, dest, spec.sha256, spec.member)
        except DataError as e:
            reason = str(e)
    else:
        reason = "downloads are off (GENFORGE_OFFLINE=1)" if spec else "no download source"
    looked = "\n  ".join(str(p) for p in tried)
    hint = f"\n{ds.notes}" if ds.notes else ""
    raise DataError(
        f"dataset {name!r}: file {filename} not found. Looked in:\n  {looked}\n"
        f"Download failed: {reason}.\nPut the file in one of those folders, or set "
        f"GENFORGE_DATA / --data-dir to a folder containing {name}/{filename}.{hint}"
    )
