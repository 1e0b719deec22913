"""Run directories: config.json + model.safetensors + trainer_state.pt, written atomically.

Every file is written to a temporary name in the same folder, fsynced, then renamed over
the old one, so a crash mid-save leaves the previous checkpoint intact."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from genforge import config as C
from genforge.recipes import get_recipe


class RunError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


def unwrap(model: nn.Module) -> nn.Module:
    """Strip torch.compile's and DDP's wrappers so saved keys are the plain module's."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def save_weights(model: nn.Module, path: Path) -> None:
    from genforge.train.transfer import saved_names

    model = unwrap(model)
    names = saved_names(model, Path(path).parent)
    if names is not None:  # a LoRA run: its adapters only (the base is another run's file)
        state = model.state_dict()
        tensors = {n: state[n].detach().contiguous() for n in names}
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
        return
    # save_model (not save_file) handles tied weights, e.g. GPT's embedding/head tying
    atomic_write(path, lambda p: save_model(model, str(p)))


def load_weights(model: nn.Module, path: Path) -> None:
    from genforge.train.transfer import saved_names

    names = saved_names(unwrap(model), Path(path).parent)
    if names is not None:  # a LoRA run: exactly its adapters (and own tensors) on the base
        tensors = load_file(str(path))
        if set(tensors) != set(names):
            raise RunError(f"{path} does not hold this LoRA run's adapters (missing: "
                           f"{sorted(set(names) - set(tensors))[:5]}, unexpected: "
                           f"{sorted(set(tensors) - set(names))[:5]})")
        unwrap(model).load_state_dict(tensors, strict=False)
        return
    missing, unexpected = load_model(model, str(path), strict=False)
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
    best, last = run_dir / "best.safetensors", run_dir / "model.safetensors"
    if which == "best" and best.is_file():
        return best
    # a run trained with `ema` keeps its averaged weights beside the raw ones (which resume
    # needs); the average is the model to use
    if (run_dir / "ema.safetensors").is_file():
        return run_dir / "ema.safetensors"
    if last.is_file():
        return last
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


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """A run directory -> (recipe module, cfg, model in eval mode). Needs nothing else."""
    run_dir = Path(run_dir)
    _, recipe, cfg = read_config(run_dir)
    model = recipe.build(cfg, run_dir=run_dir)
    from genforge.train.transfer import prepare

    model = prepare(model, cfg, run_dir, fresh=False)  # a LoRA run: its checked base + adapters
    load_weights(model, weights_path(run_dir, which))
    return recipe, cfg, model.to(device).eval()


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


def save_trainer_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def load_trainer_state(path: Path) -> dict:
    if not Path(path).is_file():
        raise RunError(f"cannot resume: {path} is missing (the run never saved a checkpoint)")
    # weights_only: a checkpoint must never be able to run code when loaded
    return torch.load(path, map_location="cpu", weights_only=True)
