"""Transfer learning on any recipe: `init_from` (copy a run's weights by name and shape),
`freeze` (stop parameters from training), and LoRA runs (adapters on a frozen base run).

A LoRA run saves only what it trained: the adapters, plus any parameter the base run could
not provide (e.g. a classification head rebuilt for another class count, as PEFT's
`modules_to_save`). `RUN/lora_base.json` names the base run's weights file and its sha256;
loading the run (generate, eval, serve, resume, merge) rebuilds the base from that file and
refuses a base that is missing or changed.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors import safe_open

from genforge.config import ConfigError
from genforge.pretrained import lora
from genforge.pretrained.sources import resolve

BASE_FILE = "lora_base.json"


def _aliases(model: nn.Module) -> list[list[str]]:
    """State-dict names grouped by the tensor they share (tied weights: one group of two)."""
    groups: dict[int, list[str]] = {}
    order = []
    for name, t in model.state_dict(keep_vars=True).items():
        key = t.data_ptr() if t.numel() else id(t)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(name)
    return [groups[k] for k in order]


def source_weights(run: Path) -> Path:
    """The weights `init_from` reads: the run's best checkpoint (else its last)."""
    if (run / BASE_FILE).is_file():
        raise ConfigError(f"init_from={run} is a LoRA run, which holds only adapters; fold them "
                          f"into a full run first: `genforge merge {run} --out NEW`, then init_from=NEW")
    from genforge.train.checkpoint import weights_path

    return weights_path(run, "best")


def _matches(name: str, pat: str) -> bool:
    """`pat` names `name` itself, a prefix of it ending at a dot boundary, or a glob over it."""
    return name == pat or name.startswith(pat.rstrip(".") + ".") or fnmatch.fnmatchcase(name, pat)


def _patterns(key: str, patterns: str, names: list[str]) -> dict[str, list[str]]:
    """Each comma-separated pattern -> the names it matches; one matching nothing is an error."""
    hits = {}
    for pat in (p.strip() for p in patterns.split(",") if p.strip()):
        hits[pat] = [n for n in names if _matches(n, pat)]
        if not hits[pat]:
            roots = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"{key} pattern {pat!r} matches no parameter; parameter names start "
                              f"with: {', '.join(roots)} (e.g. {key}={roots[0]} or a glob like "
                              f"'{roots[0]}.*')")
    return hits


def copy_matching(model: nn.Module, weights: Path, log: Callable[[str], None] = print,
                  skip: str = "") -> list[str]:
    """Copy the tensors of `weights` into `model` by name and shape, except those matching
    `skip` (comma-separated name prefixes or globs: `init_skip`, e.g. a classification head
    whose classes mean something else). Logs what was copied, kept fresh on request,
    re-initialised (not in the source) and skipped by shape; returns the names not copied.
    Nothing copied at all means another architecture: an error naming the unmatched tensors."""
    copied, missing, shape_skipped, kept_fresh = [], [], [], []
    state_names = list(model.state_dict(keep_vars=True))
    unwanted = {n for ns in _patterns("init_skip", skip, state_names).values() for n in ns}
    with safe_open(str(weights), framework="pt") as f:
        available = set(f.keys())
        with torch.no_grad():
            for names in _aliases(model):
                if any(n in unwanted for n in names):
                    kept_fresh.extend(names)
                    continue
                found = next((n for n in names if n in available), None)
                target = model.state_dict(keep_vars=True)[names[0]]
                if found is None:
                    missing.extend(names)
                    continue
                src = f.get_slice(found)
                shape = tuple(src.get_shape())
                if shape != tuple(target.shape):
                    shape_skipped.append(f"{names[0]} {list(shape)} -> {list(target.shape)}")
                    continue
                target.copy_(f.get_tensor(found).to(target.dtype))
                copied.extend(names)
    if not copied and kept_fresh and not missing and not shape_skipped:
        raise ConfigError(f"init_skip={skip!r} matches every tensor of the model, so init_from copies "
                          "nothing; narrow init_skip (e.g. to the output layer) or drop init_from")
    if not copied:
        theirs = sorted(available)
        raise ConfigError(
            f"init_from: no tensor of {weights} matches this model by name and shape (a run of "
            f"another architecture?); not found there: {', '.join(missing[:8]) or '-'}"
            + (f"; different shapes: {', '.join(shape_skipped[:8])}" if shape_skipped else "")
            + f"; it holds: {', '.join(theirs[:8])}{' ...' if len(theirs) > 8 else ''}")
    log(f"init_from {weights}: copied {len(copied)} tensors"
        + (f"; kept freshly initialised (init_skip): {', '.join(kept_fresh)}" if kept_fresh else "")
        + (f"; re-initialised (not in the source): {', '.join(missing)}" if missing else "")
        + (f"; skipped by shape (freshly initialised): {', '.join(shape_skipped)}" if shape_skipped else ""))
    return kept_fresh + missing + [s.split(" ", 1)[0] for s in shape_skipped]


def freeze(model: nn.Module, patterns: str, log: Callable[[str], None] = print) -> int:
    """Stop the parameters matching any of the comma-separated `patterns` (a name, a name
    prefix ending at a dot boundary, or a glob) from training. Returns how many froze."""
    hits = _patterns("freeze", patterns, [n for n, _ in model.named_parameters()])
    frozen = {n for ns in hits.values() for n in ns}
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"freeze: {len(frozen)} parameter tensors frozen; {trainable:,} parameters train")
    return len(frozen)


_SHA_CACHE: dict[tuple, str] = {}


def sha256_file(path: Path) -> str:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _load_base(model: nn.Module, run_dir: Path) -> dict:
    """Load the base weights named by RUN/lora_base.json into `model`, checked by sha256."""
    path = run_dir / BASE_FILE
    from genforge.train.checkpoint import RunError

    if not path.is_file():
        raise RunError(f"{run_dir} is a LoRA run (lora_r > 0) without {BASE_FILE}, so its base "
                       "weights are unknown; the run is incomplete")
    ref = json.loads(path.read_text())
    weights = Path(ref["weights"])
    fix = ("restore that file, or train the adapters again on the base you have "
           "(a LoRA run stores only its adapters, so it needs its exact base)")
    if not weights.is_file():
        raise RunError(f"{run_dir}: the base weights of this LoRA run, {weights}, are missing; {fix}")
    if sha256_file(weights) != ref["sha256"]:
        raise RunError(f"{run_dir}: the base weights {weights} changed since the adapters were "
                       f"trained (sha256 differs from {ref['sha256'][:12]}...); {fix}")
    copy_matching(model, weights, log=lambda s: None)
    return ref


def prepare(model: nn.Module, cfg, run_dir: Path | None, fresh: bool,
            log: Callable[[str], None] = print) -> nn.Module:
    """Apply the config's transfer settings to a freshly built `model`.

    fresh (a new training run): copy `init_from`'s weights, add LoRA adapters and write
    RUN/lora_base.json, freeze. Otherwise (a saved run being loaded or resumed): for a LoRA
    run, load and check its base and add the adapters, so that the run's own weights file
    (adapters only) loads on top; then freeze (resume)."""
    lora_on = getattr(cfg, "lora_r", 0) > 0
    s = lora.settings(cfg) if lora_on or getattr(cfg, "lora_r", 0) < 0 else None
    if fresh:
        if lora_on and not cfg.init_from:
            raise ConfigError("lora_r > 0 trains adapters on a pretrained base: set init_from=RUN "
                              "(or init_from=smollm2), or lora_r=0 to train every weight")
        if getattr(cfg, "init_skip", "") and not cfg.init_from:
            raise ConfigError("init_skip names tensors not to copy from init_from, but init_from "
                              "is not set: add init_from=RUN, or drop init_skip")
        not_copied: list[str] = []
        if cfg.init_from:
            weights = source_weights(resolve(cfg.init_from, log))
            not_copied = copy_matching(model, weights, log, getattr(cfg, "init_skip", ""))
        if lora_on:
            layers = lora.apply(model, s, keep_trainable=set(not_copied))
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in model.parameters())
            log(f"LoRA r={s.r} alpha={s.alpha:g} on {len(layers)} layers: {n_train:,} of {n_all:,} "
                f"parameters train ({100 * n_train / max(n_all, 1):.2f}%)")
            if run_dir is not None:
                from genforge.train.checkpoint import write_json

                write_json(Path(run_dir) / BASE_FILE, {
                    "init_from": cfg.init_from, "weights": str(weights.resolve()),
                    "sha256": sha256_file(weights), "own": sorted(not_copied)})
    elif lora_on:
        if run_dir is None:
            raise ConfigError("a LoRA run loads from its run directory (it names the base weights)")
        ref = _load_base(model, Path(run_dir))
        lora.apply(model, s, keep_trainable=set(ref.get("own", [])))
    if cfg.freeze:
        freeze(model, cfg.freeze, log if fresh else (lambda m: None))
    return model


def saved_names(model: nn.Module, run_dir: Path | None) -> list[str] | None:
    """The state-dict names a run's weights file holds: None = all of them; for a LoRA model
    the adapters and the parameters the base did not provide."""
    if not lora.is_adapted(model):
        return None
    own: list[str] = []
    if run_dir is not None and (Path(run_dir) / BASE_FILE).is_file():
        own = json.loads((Path(run_dir) / BASE_FILE).read_text()).get("own", [])
    return lora.adapter_names(model) + [n for n in own if n not in lora.adapter_names(model)]


def merge_run(run_dir: str | Path, out: str | Path, which: str = "best",
              log: Callable[[str], None] = print) -> Path:
    """A LoRA run -> a new full run at `out` with the adapters folded into the weights
    (W + alpha/r * B A), which needs neither the adapters nor the base run any more."""
    import shutil
    import tempfile

    from genforge.train import checkpoint as ckpt

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ckpt.RunError(f"{out} already exists and is not empty; choose another --out "
                            "(nothing was overwritten)")
    rname, recipe, cfg = ckpt.read_config(run_dir)
    if cfg.lora_r <= 0:
        raise ckpt.RunError(f"{run_dir} is not a LoRA run (lora_r=0: its weights are already "
                            "full); use it as it is")
    _, _, model = ckpt.load_run(run_dir, which)
    lora.merge(model)
    cfg.lora_r, cfg.init_from, cfg.freeze = 0, "", ""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.merging-"))
    try:
        # the run's other files (tokenizer, chat template, samples) come along; not its
        # weights, optimizer state or base reference
        skip = {"model.safetensors", "best.safetensors", "ema.safetensors", "trainer_state.pt",
                BASE_FILE, "config.json"}
        for p in run_dir.iterdir():
            if p.name not in skip and not p.name.startswith("."):
                (shutil.copytree if p.is_dir() else shutil.copyfile)(p, tmp / p.name)
        ckpt.save_weights(model, tmp / "model.safetensors")
        ckpt.write_json(tmp / "merged_from.json", {"run": str(run_dir.resolve()), "checkpoint": which})
        ckpt.save_config(tmp, rname, cfg)  # last: a folder with config.json is a run
        if out.is_dir():
            out.rmdir()
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(f"merged the adapters of {run_dir} ({which}) into {out}")
    return out
