"""Run directories: config.json, metrics.jsonl and checkpoints, each saved as one unit.

A checkpoint is a folder, `RUN/ckpt/step-000120/` (model.safetensors, ema.safetensors with
`ema`, trainer_state.pt, checkpoint.json), written completely under a `.tmp` name, fsynced
(files and folder), renamed, and then published by atomically replacing the symlink
`RUN/ckpt/latest`. The best weights are a folder of their own (`ckpt/best-000100/`, published
by `ckpt/best`). A kill at any moment therefore leaves the previous checkpoint whole, never
weights of one step beside the optimizer/RNG state of another (issue 16). checkpoint.json
records the sha256 of every file of its folder and trainer_state.pt records the step and the
sha256 of the weights files saved with it, so resume checks that they belong together.
The names users know stay at the top of the run as symlinks: model.safetensors,
trainer_state.pt, ema.safetensors -> ckpt/latest/..., best.safetensors -> ckpt/best/...
Runs saved before step folders (those files as plain files) are still read, and resumed.

Damaged, truncated or foreign files and a full disk raise CheckpointError: one message that
names the file and the fix (the CLI prints it as one `error:` line).

Longer than the usual ~400 lines on purpose: every write and read of a run directory
(atomic files, step folders, pointers, hashes, the old flat layout, clear errors) follows one
protocol, and checking that protocol means reading it in one file.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import shutil
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from genforge import config as C
from genforge.recipes import get_recipe

CKPT = "ckpt"  # the folder of step and best folders inside a run
MANIFEST = "checkpoint.json"  # in each step/best folder: its step and the sha256 of its files
STATE = "trainer_state.pt"
# top-level names users (and older code) read -> where they point inside ckpt/
TOP_LEVEL = {"model.safetensors": "latest", "ema.safetensors": "latest", STATE: "latest",
             "best.safetensors": "best"}


class RunError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


class CheckpointError(RunError):
    """A checkpoint file is damaged, truncated, foreign, does not belong with the rest of its
    checkpoint, or could not be written (full disk). Its message names the file and the fix."""


# Test hook, read only by tests/test_checkpoint_reliability.py: GENFORGE_TEST_KILL_AT=LABEL:N
# ends this process with SIGKILL the N-th time a save reaches the point LABEL (one of
# KILL_POINTS), i.e. between a write and the rename/publish that follows it, the moments a
# real crash or power cut is most harmful. Unset in normal use, where it costs one getenv.
KILL_POINTS = ("model.safetensors", "ema.safetensors", "trainer_state.pt", "checkpoint.json",
               "folder", "latest", "links", "pruned", "best.write", "best.folder", "best.latest")
_kills_seen: dict[str, int] = {}


def _kill_point(label: str) -> None:
    spec = os.environ.get("GENFORGE_TEST_KILL_AT")
    if not spec:
        return
    want, _, n = spec.rpartition(":")
    if want == label:
        _kills_seen[label] = _kills_seen.get(label, 0) + 1
        if _kills_seen[label] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip torch.compile's and DDP's wrappers so saved keys are the plain module's."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


@contextlib.contextmanager
def _disk_errors(path: Path, fix: str):
    """A full disk (or quota) while writing `path` -> CheckpointError naming it and the fix."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"no space left on device while writing {e.filename or path}; {fix}") from None
        raise


def _write_all(fd: int, data: bytes) -> None:
    """The one low-level write of checkpoint bytes (the disk-full test patches it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except OSError as e:
        e.filename = e.filename or str(path)  # os.write's errors name no file
        raise
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # a rename is durable only once the folder holding it is synced
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through a temporary file in its folder, fsynced, renamed over the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file 0600; a run's files get the mode any new file gets (0666 less
    # the umask), as plots and open() do, so a team can read each other's runs
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with _disk_errors(path, "free space and run the command again (the previous file is intact)"):
            write(Path(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def state_to_save(model: nn.Module, run_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors a weights file of the run in `run_dir` holds, by state-dict name: the one
    place that decides what is saved (every tensor; a LoRA run only its adapters and the
    tensors its base could not provide)."""
    from genforge.train.transfer import saved_names

    model = unwrap(model)
    state = model.state_dict()
    names = saved_names(model, Path(run_dir)) if run_dir is not None else None
    if names is not None:  # a LoRA run: its adapters only (the base is another run's file)
        return {n: state[n] for n in names}
    return state


def _without_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights (GPT's embedding and head) stored once, under the first of their names in
    sorted order, the name safetensors' save_model keeps, so load_model restores the others."""
    by_storage: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if t.numel():
            by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), []).append(name)
    drop: set[str] = set()
    for names in by_storage.values():
        if len(names) > 1:
            whole = [n for n in sorted(names) if state[n].storage_offset() == 0
                     and state[n].nbytes == state[n].untyped_storage().nbytes()]
            if whole:
                drop.update(n for n in names if n != whole[0])
    return {n: t.detach().cpu().contiguous() for n, t in state.items() if n not in drop}


def _weights_bytes(model: nn.Module, run_dir: Path | None, step: int | None = None) -> bytes:
    tensors = _without_aliases(state_to_save(model, run_dir))
    # views of one storage that none covers whole (rare): separate copies
    seen: set[int] = set()
    for n, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            tensors[n] = t.clone()
        seen.add(ptr)
    meta = {"format": "pt"}
    if step is not None:
        meta["step"] = str(step)
    return safetensors_bytes(tensors, metadata=meta)


def save_weights(model: nn.Module, path: Path, run_dir: Path | None = None) -> None:
    """One weights file outside a checkpoint folder (an imported run's model.safetensors)."""
    path = Path(path)
    data = _weights_bytes(model, run_dir or path.parent)
    atomic_write(path, lambda p: _write_file(p, data))


def _run_dir_of(path: Path) -> Path:
    """The run a weights file belongs to: RUN/ckpt/<folder>/file or RUN/file."""
    path = Path(path)
    return path.parent.parent.parent if path.parent.parent.name == CKPT else path.parent


def _unreadable(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'}): "
        "it is truncated, damaged or not a safetensors file; copy the file back from a backup "
        "(or retrain the run, or use --checkpoint last|best for its other weights)")



def _load_in_place(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Copy the tensors of a safetensors file into `model`'s parameters and buffers one at a
    time (memory-mapped), instead of reading the whole file first: loading then needs the
    model plus one tensor, not two copies of the weights (SmolLM2: ~0.5 GB less at peak).
    Returns (missing, unexpected) names; a name tied to a loaded tensor (a head sharing the
    embedding, which save_model stores once) is not missing."""
    if any(type(m)._load_from_state_dict is not nn.Module._load_from_state_dict
           or m._load_state_dict_pre_hooks for m in model.modules()):
        # a module that renames or reshapes what it reads (old checkpoint layouts, e.g. the
        # diffusion U-Net's conv attention) needs load_state_dict over the whole file
        result = model.load_state_dict(load_file(str(path)), strict=False)
        return _unshared(model, result.missing_keys), result.unexpected_keys
    state = model.state_dict(keep_vars=True)
    loaded_ptrs, unexpected = set(), []
    with open(path, "rb") as f:
        for name, dtype, shape, start, end in _safetensors_index(f, path):
            if name not in state:
                unexpected.append(name)
                continue
            dst = state[name]
            if shape != tuple(dst.shape):
                raise RuntimeError(f"size mismatch for {name}: copying a param with shape "
                                   f"{shape}, the model has {tuple(dst.shape)}")
            f.seek(start)
            with torch.no_grad():
                if dst.dtype == dtype and dst.is_contiguous() and dst.device.type == "cpu":
                    buf = dst.data.view(-1).view(torch.uint8).numpy()  # read straight into it
                    if f.readinto(memoryview(buf)) != end - start:
                        raise ValueError(f"{name} ends past the end of the file (truncated)")
                else:
                    tmp = torch.empty(shape, dtype=dtype)
                    if f.readinto(memoryview(tmp.view(-1).view(torch.uint8).numpy())) != end - start:
                        raise ValueError(f"{name} ends past the end of the file (truncated)")
                    dst.copy_(tmp)
            loaded_ptrs.add(dst.data_ptr())
    missing = [n for n, t in state.items() if t.data_ptr() not in loaded_ptrs]
    return missing, unexpected


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
              "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_index(f, path: Path):
    """(name, dtype, shape, start, end) of each tensor of an open safetensors file, from its
    header (8-byte length, then JSON), with absolute byte offsets. Read with plain file reads,
    not a memory map: the pages of a mapped file count in the process's resident memory until
    it is closed, which for a 540 MB checkpoint was most of the gap between the model's size
    and the loader's peak."""
    head = f.read(8)
    size = os.fstat(f.fileno()).st_size
    if len(head) != 8 or int.from_bytes(head, "little") > size - 8:
        raise ValueError("the header is cut short or its length is wrong")
    n = int.from_bytes(head, "little")
    header = json.loads(f.read(n))
    base = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{name} has dtype {info['dtype']}, which genforge does not read")
        start, end = (base + o for o in info["data_offsets"])
        shape = tuple(info["shape"])
        if end > size or end - start != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{name}'s bytes do not fit its shape or the file (truncated)")
        yield name, dtype, shape, start, end


def _unshared(model: nn.Module, missing: list[str]) -> list[str]:
    """Missing names less those tied to a tensor that was loaded (save_model stores a tied
    pair once)."""
    state = model.state_dict(keep_vars=True)
    loaded = {t.data_ptr() for n, t in state.items() if n not in set(missing)}
    return [n for n in missing if state[n].data_ptr() not in loaded]


def load_weights(model: nn.Module, path: Path, run_dir: Path | None = None) -> None:
    from genforge.train.transfer import saved_names

    path = Path(path)
    names = saved_names(unwrap(model), run_dir or _run_dir_of(path))
    try:
        if names is not None:  # a LoRA run: exactly its adapters (and own tensors) on the base
            tensors = load_file(str(path))
            if set(tensors) != set(names):
                raise RunError(f"{path} does not hold this LoRA run's adapters (missing: "
                               f"{sorted(set(names) - set(tensors))[:5]}, unexpected: "
                               f"{sorted(set(tensors) - set(names))[:5]})")
            unwrap(model).load_state_dict(tensors, strict=False)
            return
        missing, unexpected = _load_in_place(unwrap(model), path)
    except RunError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors' header errors, a tensor of another shape, ...
        if isinstance(e, RuntimeError) and "size mismatch" in str(e):
            raise RunError(f"{path} does not match the model built from config.json "
                           f"({str(e).splitlines()[-1].strip()[:200]})") from None
        raise _unreadable(path, e) from None
    if missing or unexpected:
        raise RunError(f"{path} does not match the model built from config.json "
                       f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})")



def save_config(run_dir: Path, recipe_name: str, cfg: C.TrainConfig) -> None:
    write_json(Path(run_dir) / "config.json", {"recipe": recipe_name, **C.to_dict(cfg)})


def read_config(run_dir: str | Path):
    """config.json of a run -> (recipe name, recipe module, cfg)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a genforge run (no config.json); pass a folder made "
                       "by `genforge train` (see `genforge runs`)")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e})") from None
    rname = d.get("recipe")
    recipe = get_recipe(rname)
    return rname, recipe, C.from_dict(recipe, d)


def weights_path(run_dir: Path, which: str = "best") -> Path:
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise RunError(f"checkpoint must be 'best' or 'last', not {which!r}")
    best = best_file(run_dir)
    if which == "best" and best is not None:
        return best
    last = latest_dir(run_dir)
    # a run trained with `ema` keeps its averaged weights beside the raw ones (which resume
    # needs); the average is the model to use
    for name in ("ema.safetensors", "model.safetensors"):
        if last is not None and (last / name).is_file():
            return last / name
    raise RunError(f"{run_dir} has no saved weights (model.safetensors); it may still be "
                   "training or have failed before its first checkpoint")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order ([] when there is none yet).

    The one reader of that file. The trainer appends a line per log and per evaluation, so
    a run killed mid-write can leave its last line cut short: that line is skipped (the
    record is lost, as the step it reported was never checkpointed). Any other bad line
    means the file was damaged, which is an error."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise RunError(f"{path} line {i + 1} is not a JSON record ({e}); the file is damaged") from None
    return records


def logged_training_time(run_dir: str | Path, cfg) -> tuple[float, int]:
    """Pure training seconds (evaluations excluded) and steps of a run, from the speed the
    trainer logs in metrics.jsonl."""
    seconds, steps, last, seen = 0.0, 0, 0, 0
    for rec in read_metrics(run_dir):
        if "examples_per_s" in rec:
            n = rec["step"] - last
            # runs logged before `examples` was recorded: every step processed the nominal batch
            examples = rec.get("examples", seen + n * cfg.batch_size * cfg.grad_accum)
            seconds += (examples - seen) / rec["examples_per_s"]
            steps, last, seen = steps + n, rec["step"], examples
    return seconds, steps


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu",
             quantize: str | None = None):
    """A run directory -> (recipe module, cfg, model in eval mode). Needs nothing else.
    quantize="int8": Linear weights as int8 for inference (genforge/pretrained/quantize.py)."""
    run_dir = Path(run_dir)
    if quantize:
        from genforge.pretrained.quantize import check_mode

        check_mode(quantize)  # before the model is built and its weights read
    _, recipe, cfg = read_config(run_dir)
    model = recipe.build(cfg, run_dir=run_dir)
    from genforge.train.transfer import prepare

    model = prepare(model, cfg, run_dir, fresh=False)  # a LoRA run: its checked base + adapters
    path = weights_path(run_dir, which)
    verify_file(path)
    load_weights(model, path, run_dir)
    model = model.to(device).eval()
    if cfg.channels_last:  # the layout it trained in: the same outputs, and faster
        model = model.to(memory_format=torch.channels_last)
    if quantize:
        from genforge.pretrained.quantize import quantize_model

        calibration = getattr(recipe, "quantize_calibration", None)
        quantize_model(model, quantize,
                       calibration=calibration(cfg, run_dir) if calibration else None,
                       token_range=getattr(recipe, "QUANT_TOKEN_RANGE", "asym"))
    if torch.device(device).type == "cpu" and getattr(cfg, "keep_freed_memory", True):
        from genforge.train.device import keep_freed_memory

        # from here on (the loading's own temporaries went back to the OS as before): sampling
        # and evaluation allocate as training does, 240,000-450,000 page faults per 64
        # diffusion samples without it, 1.2-1.35x slower
        keep_freed_memory()
    return recipe, cfg, model


def _np_state_to_tensors(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached), "name": name}


def _np_state_from_tensors(d: dict):
    import numpy as np

    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def rng_state() -> dict:
    import random

    import numpy as np

    st = {"torch": torch.get_rng_state(), "numpy": _np_state_to_tensors(np.random.get_state()),
          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(st["torch"])
    np.random.set_state(_np_state_from_tensors(st["numpy"]))
    # the tuple-of-ints state comes back as lists after the weights_only round trip
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def load_trainer_state(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"cannot resume: {path} is missing (the run never saved a checkpoint)")
    # weights_only: a checkpoint must never be able to run code when loaded. torch's own
    # message for a refused file suggests turning that off, so it is not passed on
    try:
        with warnings.catch_warnings():  # e.g. "unsupported pickle protocol": the error says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} cannot be read as a trainer state ({type(e).__name__}): it is truncated, "
            "damaged or holds objects other than tensors and plain values, which genforge never "
            "loads; restore the run from a backup, or train it again") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a genforge trainer state (no step); restore the run "
                              "from a backup, or train it again")
    return state


# ---- checkpoint folders -------------------------------------------------------------------

def _step_of(name: str | None) -> int | None:
    try:
        return int(name.rsplit("-", 1)[1]) if name else None
    except (IndexError, ValueError):
        return None


def _target(link: Path) -> str | None:
    """The folder name a pointer symlink (ckpt/latest, ckpt/best) names, or None."""
    return os.readlink(link) if link.is_symlink() else None


def _point(link: Path, target: str) -> None:
    """Make the symlink `link` name `target`, atomically: a new link renamed over the old."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if link.is_dir() and not link.is_symlink():
        # a run copied by a tool that follows links (shutil.copytree, cp -rL) holds a real
        # folder here, which a rename cannot replace; set it aside (the new checkpoint is
        # already complete) and let _prune remove it
        aside = link.with_name(link.name + ".copied.tmp")
        if aside.exists():
            shutil.rmtree(aside)
        os.rename(link, aside)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _pointed_dir(run_dir: Path, pointer: str) -> Path | None:
    link = Path(run_dir) / CKPT / pointer
    name = _target(link)
    if name is None:
        return None
    d = link.parent / name
    if not d.is_dir():
        raise CheckpointError(f"{link} names {d}, which is missing (the run's ckpt/ folder was "
                              "changed by hand); restore the folder from a backup or retrain the run")
    return d


def latest_dir(run_dir: str | Path) -> Path | None:
    """The folder of the run's last checkpoint: ckpt/step-N (published by ckpt/latest), the
    run folder itself for runs saved before step folders, None before the first save."""
    run_dir = Path(run_dir)
    d = _pointed_dir(run_dir, "latest")
    if d is not None:
        return d
    if any((run_dir / n).is_file() and not (run_dir / n).is_symlink() for n in (STATE, "model.safetensors")):
        return run_dir
    return None


def best_file(run_dir: str | Path) -> Path | None:
    run_dir = Path(run_dir)
    d = _pointed_dir(run_dir, "best")
    if d is not None:
        return d / "model.safetensors"
    old = run_dir / "best.safetensors"
    return old if old.is_file() and not old.is_symlink() else None


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    fix = "restore the run from a backup, or train it again"
    try:
        m = json.loads(path.read_text())
        int(m["step"]), dict(m["files"])
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing, so the checkpoint cannot be checked; {fix}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}); {fix}") from None
    return m


def verify_file(path: Path) -> None:
    """Check a file of a checkpoint folder against the sha256 its checkpoint.json records
    (files of runs saved before step folders have no record and are not checked)."""
    path = Path(path)
    if path.parent.parent.name != CKPT:
        return
    want = _manifest(path.parent)["files"].get(path.name)
    if want is None or not path.is_file() or sha256_of(path) != want:
        raise CheckpointError(
            f"{path} is not the file its checkpoint saved (sha256 differs from {path.parent / MANIFEST}: "
            "damaged, truncated or replaced after the save); restore it from a backup, use the "
            "run's other weights (--checkpoint best|last), or train the run again")


def _resume_fix(run_dir: Path, prev: Path | None) -> str:
    kept = (f"the checkpoint of step {_step_of(prev.name)} is intact" if prev is not None and prev != run_dir
            else "the previous checkpoint is intact" if prev is not None else "nothing was saved yet")
    return f"free space and continue with `genforge train --resume {run_dir}` ({kept})"


def _write_folder(root: Path, name: str, step: int, files: dict[str, bytes], label: str) -> Path:
    """Write `files` into root/<name>.tmp with a checkpoint.json, fsync, rename to root/<name>."""
    final, tmp = root / name, root / f"{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    manifest = {"step": step, "files": {}}
    for fname, data in files.items():
        _write_file(tmp / fname, data)
        manifest["files"][fname] = _sha256(data)
        _kill_point(label or fname)
    _write_file(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    _kill_point("checkpoint.json" if not label else label)
    _fsync_dir(tmp)
    if final.exists():  # an unpublished folder a killed save left (never the published one)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    return final


def _link_top_level(run_dir: Path) -> None:
    """RUN/model.safetensors etc. -> ckpt/latest/..., the names README and older code use."""
    for name, pointer in TOP_LEVEL.items():
        target = f"{CKPT}/{pointer}/{'model.safetensors' if name == 'best.safetensors' else name}"
        link = run_dir / name
        if not (run_dir / target).is_file():
            continue
        if not (link.is_symlink() and os.readlink(link) == target):
            _point(link, target)


def _prune(run_dir: Path) -> None:
    """Remove every folder of ckpt/ but the published last and best, and leftover .tmp files."""
    root = run_dir / CKPT
    keep = {"latest", "best", _target(root / "latest"), _target(root / "best")}
    for p in root.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    for p in run_dir.glob(".*.tmp"):  # atomic_write's temporary files of a killed process
        p.unlink()


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, nn.Module], state: dict) -> Path:
    """Save the checkpoint of `step` as one unit and publish it; returns its folder.

    weights: file name -> module (model.safetensors, ema.safetensors); state: the trainer
    state, saved with its step and the sha256 of each weights file under 'files'. Older
    step folders are removed once the new one is published."""
    run_dir = Path(run_dir)
    root = run_dir / CKPT
    prev = latest_dir(run_dir)
    tmp = root / f"step-{step:06d}.tmp"
    with _disk_errors(tmp, _resume_fix(run_dir, prev)):
        try:
            root.mkdir(parents=True, exist_ok=True)
            files = {name: _weights_bytes(m, run_dir, step) for name, m in weights.items()}
            buf = io.BytesIO()
            torch.save({**state, "step": step,
                        "files": {name: _sha256(data) for name, data in files.items()}}, buf)
            files[STATE] = buf.getvalue()
            folder = _write_folder(root, f"step-{step:06d}", step, files, "")
            _kill_point("folder")
            _point(root / "latest", folder.name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # free the space now; resume would too
            raise
        _kill_point("latest")
        _link_top_level(run_dir)
        _kill_point("links")
        _prune(run_dir)
        _kill_point("pruned")
    return folder


def save_best(run_dir: str | Path, step: int, model: nn.Module) -> Path:
    """Save `model` as the run's best weights (ckpt/best-N/model.safetensors, published by
    ckpt/best). Older best folders go when the next checkpoint is published: until then the
    one the last checkpoint's state names is kept, for a resume from it."""
    run_dir = Path(run_dir)
    root = run_dir / CKPT
    tmp = root / f"best-{step:06d}.tmp"
    with _disk_errors(tmp, _resume_fix(run_dir, latest_dir(run_dir))):
        try:
            root.mkdir(parents=True, exist_ok=True)
            data = _weights_bytes(model, run_dir, step)
            folder = _write_folder(root, f"best-{step:06d}", step, {"model.safetensors": data}, "best.write")
            _kill_point("best.folder")
            _point(root / "best", folder.name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _kill_point("best.latest")
        _link_top_level(run_dir)
    return folder


def _repair_best(run_dir: Path, state: dict) -> None:
    """A best saved after the checkpoint we resume from (a kill between the two) is from a
    future the resumed run has not reached yet: point ckpt/best back to the best that
    checkpoint knew, as the uninterrupted run had it at that step."""
    root = run_dir / CKPT
    shown = _step_of(_target(root / "best"))
    if shown is None or "best_step" not in state or shown <= state["step"]:
        return
    want = state["best_step"]
    if want is not None and (root / f"best-{want:06d}").is_dir():
        _point(root / "best", f"best-{want:06d}")
    else:
        (root / "best").unlink()
        if (run_dir / "best.safetensors").is_symlink():
            (run_dir / "best.safetensors").unlink()


def resume_checkpoint(run_dir: str | Path, log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """The folder and trainer state to resume `run_dir` from, after removing what killed
    saves left (.tmp files and folders, unpublished step folders) and checking that every
    file is the one its checkpoint saved and that the weights belong to the state's step."""
    run_dir = Path(run_dir)
    folder = latest_dir(run_dir) if run_dir.is_dir() else None
    if folder is None:
        raise RunError(f"cannot resume: {run_dir} holds no checkpoint (the run never saved one); "
                       "start it again with another --out")
    if folder == run_dir:  # saved before step folders: nothing records which files belong together
        log(f"note: {run_dir} was saved by an older genforge; its weights and state cannot be "
            "checked against each other (the next save writes the checked layout)")
        return folder, load_trainer_state(run_dir / STATE)
    manifest = _manifest(folder)
    for name in manifest["files"]:
        verify_file(folder / name)
    state = load_trainer_state(folder / STATE)
    weights = {k: v for k, v in manifest["files"].items() if k != STATE}
    if state.get("step") != manifest["step"] or state.get("files") != weights:
        raise CheckpointError(
            f"cannot resume {run_dir}: the weights in {folder} do not belong to {folder / STATE} "
            f"(step {state.get('step')} vs {manifest['step']}, or another sha256); restore the run "
            "from a backup, or train it again")
    _repair_best(run_dir, state)
    _prune(run_dir)
    _link_top_level(run_dir)
    return folder, state
