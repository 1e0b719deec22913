"""Checkpoint reliability (issue 16): a training process killed with SIGKILL at any moment,
inside every save included, resumes to the uninterrupted result bit for bit or is refused
with a clear error; a full disk leaves the previous checkpoint usable; damaged, truncated
and hostile files give one clear error (never a traceback, never code execution)."""
import errno
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from genforge.config import make_config
from genforge.recipes import get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train.trainer import fit

IC = get_recipe("image-classify")
QUIET = dict(log=lambda s: None)
ERROR = 3  # exit code of a child whose resume was refused with a RunError


def _cfg(**kw):
    # dropout + augmentation draw random numbers, ema and best add files: all must resume exactly
    base = {"model": "mlp", "data": "digits", "model.hidden": (32,), "model.dropout": 0.2,
            "crop_pad": 1, "batch_size": 16, "max_steps": 8, "eval_every": 2, "eval_batches": 1,
            "ema": 0.9, "plots": False, "seed": 3}
    base.update(kw)
    return make_config(IC, base)


def _child(fn, run: Path, kill_at: str | None = None, kill_after: float | None = None) -> int:
    """Run fn() in a forked process (no import cost); its exit code, -9 when killed.
    A RunError (a refused resume) exits with ERROR and leaves its message in RUN.error."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            if kill_at:
                os.environ["GENFORGE_TEST_KILL_AT"] = kill_at
            torch.set_num_threads(1)
            fn()
            code = 0
        except ckpt.RunError as e:
            Path(f"{run}.error").write_text(str(e))
            code = ERROR
        except BaseException as e:  # noqa: BLE001 - reported to the parent as a failure
            Path(f"{run}.error").write_text(f"{type(e).__name__}: {e}")
        finally:
            os._exit(code)
    if kill_after is not None:
        time.sleep(kill_after)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _train(run: Path, resume: bool = False):
    return lambda: fit("image-classify", _cfg(), run, resume=resume, **QUIET)


def _same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b


def _differences(ref: Path, run: Path) -> list[str]:
    """What differs between two finished runs: weights, trainer state, evaluations, layout."""
    out = []
    for name in ("model.safetensors", "ema.safetensors", "best.safetensors"):
        a, b = load_file(ref / name), load_file(run / name)
        out += [f"{name}:{k}" for k in a if k not in b or not torch.equal(a[k], b[k])]
    sa, sb = (torch.load(r / "trainer_state.pt", weights_only=True) for r in (ref, run))
    # (not the files' sha256: safetensors writes its metadata keys in a per-process order)
    for k in ("step", "best", "best_step", "bad_evals", "ema_updates"):
        if sa[k] != sb[k]:
            out.append(f"trainer_state:{k}")
    for key in ("optimizers", "rng"):
        fa, fb = (torch.utils._pytree.tree_flatten(s[key])[0] for s in (sa, sb))
        if len(fa) != len(fb) or not all(_same(x, y) for x, y in zip(fa, fb)):
            out.append(f"trainer_state:{key}")
    val = [[r for r in ckpt.read_metrics(d) if any(k.startswith("val_") for k in r)] for d in (ref, run)]
    if val[0] != val[1]:
        out.append("metrics.jsonl val records")
    left = sorted(p.name for p in (run / "ckpt").iterdir())
    if left != sorted(p.name for p in (ref / "ckpt").iterdir()) or list(run.glob(".*.tmp")):
        out.append(f"leftovers in ckpt/: {left}")
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted run (in a child too, so both sides run alike) and its duration."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    # imported here once (torch, data loaders), the forked children start warm
    fit("image-classify", _cfg(), ref.with_name("warm-up"), **QUIET)
    t0 = time.perf_counter()
    assert _child(_train(ref), ref) == 0
    return ref, time.perf_counter() - t0


def _crash_and_resume(tmp: Path, ref: Path, tries: list[tuple[str | None, float | None]]) -> Counter:
    outcomes: Counter = Counter()
    for i, (kill_at, kill_after) in enumerate(tries):
        run = tmp / f"try{i}"
        first = _child(_train(run), run, kill_at=kill_at, kill_after=kill_after)
        what = f"kill_at={kill_at}" if kill_at else f"kill after {kill_after:.2f}s"
        if first == 0:
            outcome = "finished before the kill"
        else:
            assert first == -signal.SIGKILL, f"{what}: the first run failed ({first})"
            code = _child(_train(run, resume=True), run)
            if code == ERROR:
                message = Path(f"{run}.error").read_text()
                # a refusal is fine only where nothing was ever published
                assert not (run / "ckpt" / "latest").is_symlink(), f"{what}: {message}"
                outcome = "resume refused (killed before the first checkpoint was published)"
                outcomes[outcome] += 1
                continue
            assert code == 0, f"{what}: resume failed: {Path(f'{run}.error').read_text()}"
            outcome = "resumed, identical"
        diff = _differences(ref, run)
        assert not diff, f"{what}: the resumed run differs from the uninterrupted one: {diff}"
        outcomes[outcome] += 1
        shutil.rmtree(run)
    print(f"\n{len(tries)} tries: " + "; ".join(f"{n} {o}" for o, n in outcomes.most_common()))
    return outcomes


def test_kill_inside_every_save_point_resumes_exactly_or_is_refused(tmp_path, reference):
    """SIGKILL at every write/rename/publish point of the first saves (checkpoint and best)."""
    ref, _ = reference
    tries = [(f"{label}:{n}", None) for label in ckpt.KILL_POINTS for n in (1, 3)]
    outcomes = _crash_and_resume(tmp_path, ref, tries)
    # refusals (asserted above) only where the first save was never published
    assert outcomes["resumed, identical"] >= 10


@pytest.mark.slow
def test_kill_anywhere_many_times(tmp_path, reference):
    """Every save point of every save, then kills at random moments of the run."""
    ref, seconds = reference
    rng = random.Random(16)
    tries = [(f"{label}:{n}", None) for label in ckpt.KILL_POINTS for n in range(1, 9)]
    tries += [(None, rng.uniform(0.0, seconds)) for _ in range(60)]
    _crash_and_resume(tmp_path, ref, tries)


def test_kill_while_resuming_a_killed_run(tmp_path, reference):
    """A resume killed inside its own save, then resumed again."""
    ref, _ = reference
    run = tmp_path / "run"
    assert _child(_train(run), run, kill_at="trainer_state.pt:2") == -signal.SIGKILL
    assert _child(_train(run, resume=True), run, kill_at="folder:2") == -signal.SIGKILL
    assert _child(_train(run, resume=True), run) == 0
    assert not _differences(ref, run)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    fit("image-classify", _cfg(), run, stop_at=2, **QUIET)
    before = {p.name: p.read_bytes() for p in (run / "ckpt" / "step-000002").iterdir()}

    def full_disk(fd, data):  # the disk fills halfway through a file
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "_write_all", full_disk)
    with pytest.raises(ckpt.CheckpointError) as e:
        fit("image-classify", _cfg(), run, resume=True, **QUIET)
    msg = str(e.value)
    assert msg.startswith("no space left on device while writing ") and "--resume" in msg
    assert "step 2 is intact" in msg and "model.safetensors" in msg
    monkeypatch.undo()
    # the previous checkpoint is untouched and resumable; the half-written folder is gone
    assert {p.name: p.read_bytes() for p in (run / "ckpt" / "step-000002").iterdir()} == before
    assert not list((run / "ckpt").glob("*.tmp"))
    fit("image-classify", _cfg(), run, resume=True, **QUIET)
    full = fit("image-classify", _cfg(), tmp_path / "full", **QUIET)
    assert not _differences(full, run)


def test_disk_full_is_one_error_line_from_the_cli(tmp_path):
    run = tmp_path / "run"
    fit("image-classify", _cfg(max_steps=4), run, stop_at=2, **QUIET)
    code = ("import errno, os, sys\n"
            "from genforge.train import checkpoint as c\n"
            "def full(fd, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "c._write_all = full\n"
            f"sys.argv = ['genforge', 'train', '--resume', {str(run)!r}]\n"
            "from genforge.cli import main\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: no space left on device while writing ")
    assert len(p.stderr.strip().splitlines()) == 1


# ---- damaged and hostile files ----------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pristine") / "run"
    fit("image-classify", _cfg(max_steps=4), run, **QUIET)
    return run


def _old_layout(run: Path, dest: Path) -> Path:
    """The same run as genforge wrote it before step folders: plain files at the top."""
    dest.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(run / name, dest / name)
    for name in ("model.safetensors", "ema.safetensors", "trainer_state.pt", "best.safetensors"):
        shutil.copy((run / name).resolve(), dest / name)
    return dest


class _Evil:
    """Unpickling this creates the marker file: what a hostile trainer_state.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_files(marker: Path) -> dict[str, bytes]:
    import io

    buf = io.BytesIO()
    torch.save({"step": 4, "payload": _Evil(marker)}, buf)
    return {"torch.save of an object": buf.getvalue(), "raw pickle": pickle.dumps(_Evil(marker)),
            "random bytes": random.Random(0).randbytes(3000), "empty": b""}


def test_hostile_trainer_state_is_refused_without_running_code(tmp_path, pristine):
    marker = tmp_path / "marker"
    for what, data in _hostile_files(marker).items():
        path = tmp_path / "trainer_state.pt"
        path.write_bytes(data)
        with pytest.raises(ckpt.CheckpointError) as e:
            ckpt.load_trainer_state(path)
        assert str(path) in str(e.value) and "weights_only=False" not in str(e.value), what
        # the same file in a checkpoint whose record was forged to match it
        run = tmp_path / what.replace(" ", "-")
        shutil.copytree(pristine, run, symlinks=True)
        folder = ckpt.latest_dir(run)
        (folder / "trainer_state.pt").write_bytes(data)
        manifest = ckpt._manifest(folder)
        manifest["files"]["trainer_state.pt"] = ckpt.sha256_of(folder / "trainer_state.pt")
        (folder / "checkpoint.json").write_text(__import__("json").dumps(manifest))
        with pytest.raises(ckpt.CheckpointError, match="trainer_state.pt"):
            fit("image-classify", _cfg(max_steps=4), run, resume=True, **QUIET)
    assert not marker.exists()


def test_weights_and_state_of_different_steps_are_refused(tmp_path, pristine):
    """A weights file swapped for another of the same run (valid file, valid hash record)."""
    run = tmp_path / "run"
    shutil.copytree(pristine, run, symlinks=True)
    folder = ckpt.latest_dir(run)
    shutil.copy(ckpt.best_file(run), folder / "model.safetensors")
    manifest = ckpt._manifest(folder)
    manifest["files"]["model.safetensors"] = ckpt.sha256_of(folder / "model.safetensors")
    (folder / "checkpoint.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="do not belong to"):
        ckpt.resume_checkpoint(run, **QUIET)


def test_damaged_files_are_one_error_line_from_the_cli(tmp_path, pristine):
    from test_cli import gf

    new = tmp_path / "new"
    shutil.copytree(pristine, new, symlinks=True)
    best = ckpt.best_file(new)
    best.write_bytes(best.read_bytes()[:100])
    old = _old_layout(pristine, tmp_path / "old")
    (old / "best.safetensors").write_bytes((old / "best.safetensors").read_bytes()[:100])
    (old / "trainer_state.pt").write_bytes(_hostile_files(tmp_path / "marker")["torch.save of an object"])
    (tmp_path / "afile").write_text("not a folder")
    cases = [(["eval", "new"], "/model.safetensors is not the file its checkpoint saved"),
             (["eval", "old"], "best.safetensors cannot be read (ValueError: the header is cut short"),
             (["train", "--resume", "old"], "trainer_state.pt cannot be read as a trainer state"),
             (["train", "mlp-digits", "--out", "afile"], "afile is a file, not a run directory")]
    for args, message in cases:
        p = gf(*args, cwd=tmp_path, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (args, p.stderr)
        assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert message in p.stderr, (args, p.stderr)
        assert "weights_only=False" not in p.stderr
    assert not (tmp_path / "marker").exists()
    # an old-layout run that is intact still loads and resumes
    intact = _old_layout(pristine, tmp_path / "intact")
    _, _, model = ckpt.load_run(intact, "last")
    assert all(torch.equal(v, load_file(pristine / "ema.safetensors")[k]) for k, v in model.state_dict().items())


# ---- fuzz of the loader: random truncations and byte flips ----------------------------

FUZZ_FILES = ["ckpt/latest/model.safetensors", "ckpt/latest/ema.safetensors",
              "ckpt/latest/trainer_state.pt", "ckpt/latest/checkpoint.json", "ckpt/best/model.safetensors",
              "old:model.safetensors", "old:trainer_state.pt", "old:best.safetensors"]
fuzz_counts: Counter = Counter()


def _load_everything(run: Path) -> dict:
    """What resume, `--checkpoint last` and `--checkpoint best` load, as tensors."""
    folder, state = ckpt.resume_checkpoint(run, **QUIET)
    model = IC.build(_cfg(max_steps=4), run_dir=run)
    ckpt.load_weights(model, folder / "model.safetensors", run)
    out = {f"resume:{k}": v for k, v in model.state_dict().items()}
    out.update({f"state:{i}": v for i, v in enumerate(torch.utils._pytree.tree_flatten(state["optimizers"])[0])})
    for which in ("last", "best"):
        out.update({f"{which}:{k}": v for k, v in ckpt.load_run(run, which)[2].state_dict().items()})
    return out


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory, pristine):
    base = tmp_path_factory.mktemp("fuzz")
    old = _old_layout(pristine, base / "old")
    expect = {"new": _load_everything(pristine), "old": _load_everything(old)}
    yield base, old, expect
    print(f"\nloader fuzz: {sum(fuzz_counts.values())} mutated files: "
          + "; ".join(f"{n} {o}" for o, n in sorted(fuzz_counts.items())))


MUTATIONS = dict(target=st.sampled_from(FUZZ_FILES), cut=st.booleans(), where=st.floats(0, 1),
                 flip=st.integers(1, 255))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(**MUTATIONS)
def test_fuzzed_checkpoint_files_give_a_clear_error_or_the_true_weights(pristine, fuzz_base, target,
                                                                         cut, where, flip):
    _fuzz_case(pristine, fuzz_base, target, cut, where, flip)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(**MUTATIONS)
def test_fuzzed_checkpoint_files_many(pristine, fuzz_base, target, cut, where, flip):
    _fuzz_case(pristine, fuzz_base, target, cut, where, flip)


def _fuzz_case(pristine, fuzz_base, target, cut, where, flip):
    """Mutate one file of a copy of a real run; then load it as resume, last and best do."""
    base, old, expect = fuzz_base
    run = base / "case"
    if run.exists():
        shutil.rmtree(run)
    layout = "old" if target.startswith("old:") else "new"
    shutil.copytree(old if layout == "old" else pristine, run, symlinks=True)
    path = (run / target.removeprefix("old:")).resolve()
    data = bytearray(path.read_bytes())
    i = min(int(where * len(data)), len(data) - 1)
    if cut:
        data = data[:i]
    else:
        data[i] ^= flip
    path.write_bytes(bytes(data))
    try:
        got = _load_everything(run)
    except ckpt.RunError as e:
        assert str(e) and "Traceback" not in str(e) and "weights_only=False" not in str(e)
        fuzz_counts[f"{layout} layout: clear error"] += 1
        return
    # it loaded: the new layout's hashes let only byte-identical content through; a file of
    # the old layout has no record, so only its format is checked there
    same = got.keys() == expect[layout].keys() and all(_same(got[k], expect[layout][k]) for k in got)
    if layout == "new":
        assert same, f"{target} changed at byte {i} and loaded without an error"
    fuzz_counts[f"{layout} layout: loaded, {'same' if same else 'different'} values"] += 1


def test_weights_cut_inside_their_data_are_named(tmp_path):
    """The loader reads tensors with plain reads (no memory map); a file whose header is whole
    but whose data is cut short is one error naming the tensor, not a partly loaded model."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    ckpt.load_weights(other, path, tmp_path)  # whole file: loads exactly
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ckpt.RunError, match=r"cannot be read \(ValueError: .*truncated"):
        ckpt.load_weights(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)), path, tmp_path)
