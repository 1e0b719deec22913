"""The one training loop.

Reads top-down: set-up (device, seed, model, optimiser, schedule, resume), then the loop
(accumulate micro-batches -> clip -> step -> schedule), with logging, evaluation,
checkpointing and early stopping every N steps. Recipes plug in through `loss` (one
optimiser) or `optimizers` + `update` (GAN, RL); the few other names it reads from a recipe
(`log_samples`, `extra_state`, `NO_EMA`, ...) are listed in genforge/recipes/contract.py.

Over ~400 lines on purpose: the loop, with resume, time budget, EMA and DDP, is meant to be
read in one sitting (nanoGPT's train.py, litgpt's fit()), not spread over hooks.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from genforge import config as C
from genforge.recipes import get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train import distributed
from genforge.train import transfer
from genforge.train.device import autocast, keep_freed_memory, resolve_device, seed_everything, to_device
from genforge.train.ema import EMA, check_decay
from genforge.train.optim import lr_factor, make_optimizer, make_scheduler, penalty, warmup_note


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if mode == "min" else value > best


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint we resume from (and a line a
    killed run left half-written)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    keep = [json.dumps(r) + "\n" for r in ckpt.read_metrics(run_dir) if r.get("step", 0) <= step]
    ckpt.atomic_write(path, lambda p: p.write_text("".join(keep)))


def _check_grad_accum(recipe, recipe_name: str, cfg: C.TrainConfig) -> None:
    if cfg.grad_accum < 1:
        raise C.ConfigError(f"grad_accum must be >= 1 (micro-batches per optimizer update), got {cfg.grad_accum}")
    # a recipe's own update receives one batch per step; unless it declares that it
    # accumulates, grad_accum would be silently ignored (and examples/s overstated)
    if cfg.grad_accum > 1 and hasattr(recipe, "update") and not getattr(recipe, "UPDATE_ACCUMULATES", False):
        raise C.ConfigError(f"grad_accum={cfg.grad_accum} does not apply to the {recipe_name} recipe: "
                            "its own update makes one optimizer step per batch; remove the grad_accum "
                            "setting (raise batch_size for larger batches)")


def fit(recipe_name: str, cfg: C.TrainConfig, out_dir: str | Path, resume: bool = False,
        stop_at: int | None = None, log: Callable[[str], None] = print,
        overwrite: bool = False) -> Path:
    """Train `cfg` with recipe `recipe_name` into `out_dir` (or continue it when `resume`).

    `stop_at` ends the run early after that many steps, checkpointed, as an interruption
    would (used to test that resuming is exact). `overwrite`: start again in an existing
    run folder (see `fit_model`)."""
    return fit_model(recipe_name, cfg, out_dir, resume, stop_at, log, overwrite)[0]


def fit_model(recipe_name: str, cfg: C.TrainConfig, out_dir: str | Path, resume: bool = False,
              stop_at: int | None = None, log: Callable[[str], None] = print,
              overwrite: bool = False) -> tuple[Path, torch.nn.Module]:
    """`fit`, also returning the trained model as it is in memory at the end: the model that
    `load_run(out_dir, "last")` rebuilds (the weight average when `ema` is on).

    A run that fails before its first checkpoint leaves nothing behind (a folder it created
    is removed), so the same command can simply be run again. `overwrite` moves an existing
    `out_dir` aside and trains a new run there; the old one is deleted once the new run has
    saved a checkpoint, and put back when the new run fails before that."""
    out_dir = Path(out_dir)
    C.check_ranges(cfg)  # a config built in Python skipped apply_overrides' checks
    d = distributed.setup(cfg.device)  # under torchrun: this process's rank (else one process)
    try:
        if not d.is_main:  # rank 0 alone writes, moves aside and cleans up the run directory
            return _fit_model(recipe_name, cfg, out_dir, resume, stop_at, lambda _: None, d)
        return _fit_main(recipe_name, cfg, out_dir, resume, stop_at, log, overwrite, d)
    finally:
        distributed.teardown(d)


def _fit_main(recipe_name, cfg, out_dir, resume, stop_at, log, overwrite, d):
    aside = None
    if overwrite and not resume and out_dir.is_dir() and any(out_dir.iterdir()):
        aside = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
        out_dir.rename(aside)
        log(f"--overwrite: the old {out_dir} waits in {aside} until the new run saves its "
            "first checkpoint")
    created = not out_dir.exists()
    try:
        result = _fit_model(recipe_name, cfg, out_dir, resume, stop_at, log, d)
    except BaseException:  # Ctrl-C too: a run stopped before its first save is not a run
        if created and not _has_checkpoint(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)
            if aside is not None:
                aside.rename(out_dir)
                log(f"the new run failed before its first checkpoint; {out_dir} is the old run again")
        elif aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return result


def _has_checkpoint(out_dir: Path) -> bool:
    try:
        return out_dir.is_dir() and ckpt.latest_dir(out_dir) is not None
    except ckpt.RunError:  # a damaged pointer: something was saved, keep it for the user to see
        return True


# recipes whose train stream cannot be split into per-rank slices of one global batch
_NOT_DATA_PARALLEL = {"reinforce": "its batches come from acting in environments with the current "
                                   "agent, not from a dataset that can be split across processes"}


def check_data_parallel(recipe_name: str) -> None:
    """One ConfigError for a recipe that cannot train over several processes (the CLI asks
    before it launches torchrun, so the refusal comes once, not once per rank)."""
    if recipe_name in _NOT_DATA_PARALLEL:
        raise C.ConfigError(f"the {recipe_name} recipe cannot train data-parallel: "
                            f"{_NOT_DATA_PARALLEL[recipe_name]}; train it as one process "
                            "(without --nproc/torchrun)")


def _fit_model(recipe_name: str, cfg: C.TrainConfig, out_dir: Path, resume: bool,
               stop_at: int | None, log: Callable[[str], None],
               d: distributed.Dist = distributed.SINGLE) -> tuple[Path, torch.nn.Module]:
    recipe = get_recipe(recipe_name)
    if d.enabled:
        check_data_parallel(recipe_name)
    if not d.is_main:
        distributed.barrier(d)  # rank 0 checks, cleans and writes the run directory first
        # ... and its config.json, with what building filled in (a vocabulary size; the model
        # config an init_from language-model run passes on): every rank builds that model
        cfg = ckpt.read_config(out_dir)[2]
    if cfg.max_minutes < 0:
        raise C.ConfigError(f"max_minutes must be >= 0 (0 = no time budget), got {cfg.max_minutes}")
    _check_grad_accum(recipe, recipe_name, cfg)  # before anything is written
    fsdp = cfg.fsdp and d.enabled  # weights, gradients and optimizer state sharded (FSDP2)
    if cfg.fsdp:
        _check_fsdp(recipe, recipe_name, cfg)  # before anything is written
        if not d.enabled:
            log("note: fsdp=true shards over torchrun processes (--nproc N); as one process "
                "this run trains unsharded")
    if cfg.ema:
        check_decay(cfg.ema)  # before anything is written
        if hasattr(recipe, "NO_EMA"):
            raise C.ConfigError(f"ema does not apply to the {recipe_name} recipe: "
                                f"{recipe.NO_EMA}; remove the ema setting")
    if d.is_main and out_dir.exists() and not out_dir.is_dir():
        raise ckpt.RunError(f"{out_dir} is a file, not a run directory; choose another --out "
                            "(nothing was overwritten)")
    if d.is_main and not resume and out_dir.exists() and any(out_dir.iterdir()):
        raise ckpt.RunError(f"{out_dir} already exists and is not empty; pass --resume {out_dir} "
                            "to continue it, --overwrite to start it again, or choose another "
                            "--out (nothing was overwritten)")
    # resume: the last published checkpoint, its files checked against each other
    ckpt_dir, state = ckpt.resume_checkpoint(out_dir, log) if resume else (None, None)
    if state is not None and bool(cfg.ema) != ("ema_updates" in state):
        # checked before config.json is rewritten: a refused resume changes nothing
        had = "with" if "ema_updates" in state else "without"
        raise ckpt.RunError(f"cannot resume {out_dir} with ema={cfg.ema}: it was trained {had} a "
                            "weight average; resume it with its own ema setting, or start a new run")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = distributed.device_for(d, resolve_device(cfg.device))
    seed_everything(cfg.seed, cfg.deterministic)  # the same on every rank: identical initial weights
    if device.type == "cpu" and cfg.keep_freed_memory:
        keep_freed_memory()

    try:
        model = recipe.build(cfg, run_dir=out_dir).to(device)
        # init_from, LoRA adapters, freeze (a resumed LoRA run reloads and checks its base)
        model = transfer.prepare(model, cfg, out_dir, fresh=state is None, log=log)
        if cfg.channels_last and not fsdp:  # FSDP shards parameters as plain contiguous rows
            model = model.to(memory_format=torch.channels_last)  # 4-D tensors only
    except Exception as e:
        if created:  # leave no half-made run behind
            shutil.rmtree(out_dir, ignore_errors=True)
        if type(e) is ValueError:  # a model's own range check (torch's or genforge's)
            raise C.ConfigError(f"{e} (check the model.* settings)") from None
        raise
    if d.is_main:
        ckpt.save_config(out_dir, recipe_name, cfg)  # after build: data-dependent fields are filled
        distributed.barrier(d)  # the other ranks now read what build wrote (a tokenizer, a base)
    custom = hasattr(recipe, "update")
    if state is not None:  # in place, before FSDP (if on) shards the parameters
        ckpt.load_weights(model, ckpt_dir / "model.safetensors", out_dir)
    replica = None
    if fsdp:
        # rank 0 evaluates, samples and saves a plain copy of the weights, refreshed from the
        # shards (`gather`); the other ranks hold their shards only
        replica = copy.deepcopy(model) if d.is_main else None
        distributed.shard_model(model)
    opts = recipe.optimizers(model, cfg) if custom else {"main": make_optimizer(model, cfg, fused=not fsdp)}
    # batches drawn per optimizer step: the loss path draws each micro-batch itself; a custom
    # update that accumulates (UPDATE_ACCUMULATES) gets all of a step's micro-batches in one
    draws_per_step = 1 if custom else cfg.grad_accum
    # what one step really processes (grad_accum > 1 with a non-accumulating update is refused)
    examples_per_step = cfg.batch_size * cfg.grad_accum * d.world
    if custom:
        distributed.average_gradients_before_step(opts, d)

    step, best, bad_evals, best_step = 0, None, 0, None
    if state is not None:
        step, best, bad_evals = state["step"], state["best"], state["bad_evals"]
        best_step = state.get("best_step")
    ema = EMA(model, cfg.ema) if cfg.ema else None
    if ema is not None and state is not None:
        ckpt.load_weights(ema.model, ckpt_dir / "ema.safetensors", out_dir)
        ema.updates = state["ema_updates"]
    # what evaluation, samples and best.safetensors use: the averaged weights when there are any
    eval_model = ema.model if ema is not None else replica if fsdp else model

    # the iterator counts batches drawn, not optimizer steps: resume where it really stopped
    # under torchrun each rank draws the global batch (batch_size x world) and keeps its slice
    stream = recipe.batches(distributed.global_batch_config(cfg, d), "train",
                            start_step=step * draws_per_step, model=model)
    steps_per_epoch = getattr(stream, "steps_per_epoch", None)
    batches = distributed.shard(stream, d, recipe_name)
    if steps_per_epoch:
        steps_per_epoch = max(1, steps_per_epoch // draws_per_step)
    total = cfg.max_steps or math.ceil(cfg.epochs * (steps_per_epoch or 1000))
    # time budget: seconds spent before this call (a resumed run) + this call's time from here
    limit_s, spent_before, t_start = cfg.max_minutes * 60, (state or {}).get("elapsed_s", 0.0), time.perf_counter()
    shared_clock = [None]  # distributed + time budget: rank 0's clock, so LR and stop agree

    def elapsed() -> float:
        if shared_clock[0] is not None:
            return shared_clock[0]
        return spent_before + time.perf_counter() - t_start

    time_frac = (lambda: elapsed() / limit_s) if limit_s else None
    scheds = {k: make_scheduler(o, cfg, total, time_frac) for k, o in opts.items()}
    if state is not None:
        for k, o in opts.items():
            if fsdp:
                distributed.load_optimizer_state(model, o, state["optimizers"][k])
            else:
                o.load_state_dict(state["optimizers"][k])
            scheds[k].load_state_dict(state["schedulers"][k])
        if hasattr(recipe, "load_extra_state") and "extra" in state:
            recipe.load_extra_state(model, cfg, state["extra"])
        ckpt.set_rng_state(state["rng"])
        _truncate_metrics(out_dir, step)
        log(f"resumed {out_dir} at step {step}/{total}")
        was = state.get("global_batch")
        if was and was != cfg.batch_size * d.world:
            log(f"note: the global batch was {was} examples per micro-batch and is now "
                f"{cfg.batch_size * d.world} (batch_size {cfg.batch_size} x {d.world} processes)")
        planned = state.get("total_steps")
        if planned and planned != total and cfg.schedule != "constant":
            lr_now = next(iter(opts.values())).param_groups[0]["lr"]
            log(f"note: the run was planned for {planned} steps and now runs to {total}: the "
                f"learning-rate schedule is stretched to the new length, so the LR goes from "
                f"{lr_now:.3g} (where the old schedule left it) to {cfg.lr * lr_factor(step, cfg, total, time_frac() if time_frac else None):.3g} now")
    note = warmup_note(cfg, total)
    if note:
        log(note)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {cfg.model}, {n_params:,} parameters"
        + (f" ({n_train:,} trainable)" if n_train != n_params else "") + f", on {device}"
        + (f", data-parallel over {d.world} processes (global batch {cfg.batch_size * d.world})"
           if d.enabled else "")
        + (", weights, gradients and optimizer state sharded (FSDP)" if fsdp else ""))
    if hasattr(recipe, "data_summary") and state is None:
        for line in recipe.data_summary(cfg):
            log(f"data: {line}")
    log(f"config ({out_dir / 'config.json'} has every key):\n{C.format_config_compact(cfg, recipe)}")
    log(f"training: {total} steps" + (f" ({total / steps_per_epoch:.3g} epochs of {steps_per_epoch} steps)"
                                     if steps_per_epoch else "")
        + (f", at most {cfg.max_minutes:g} min" if cfg.max_minutes else ""))

    # loss recipes train through DDP (gradients all-reduced during backward); a custom update
    # gets the plain module and its optimizers average gradients before stepping
    ddp = distributed.wrap_ddp(model, d, device) if not (custom or fsdp) else model
    train_model = torch.compile(ddp) if cfg.compile else ddp
    eval_every = cfg.eval_every or steps_per_epoch or total
    save_every = cfg.save_every or eval_every
    writer = _tensorboard(out_dir, cfg.tensorboard, log) if d.is_main else None
    metrics_path = out_dir / "metrics.jsonl"
    gathered_at = [None]

    def gather() -> None:
        """FSDP, every rank: the shards' current weights into rank 0's plain copy (once a step)."""
        if fsdp and gathered_at[0] != step:
            full = distributed.full_model_state(model)
            if d.is_main:
                replica.load_state_dict(full)
            gathered_at[0] = step

    def save(final: bool = False) -> None:
        # one checkpoint folder, published at once (genforge/train/checkpoint.py)
        gather()
        optim_states = ({k: distributed.full_optimizer_state(model, o) for k, o in opts.items()}
                        if fsdp else None)  # collective: before the other ranks leave
        weights = {"model.safetensors": replica if fsdp else model}
        if not d.is_main:
            return
        st = {"step": step, "best": best, "best_step": best_step, "bad_evals": bad_evals, "rng": ckpt.rng_state(),
              "global_batch": cfg.batch_size * d.world,
              "optimizers": optim_states or {k: o.state_dict() for k, o in opts.items()},
              "schedulers": {k: s.state_dict() for k, s in scheds.items()}, "elapsed_s": elapsed(), "total_steps": total}
        if hasattr(recipe, "extra_state"):
            st["extra"] = recipe.extra_state(model, cfg)
        if ema is not None:
            weights["ema.safetensors"] = ema.model
            st["ema_updates"] = ema.updates
        ckpt.save_checkpoint(out_dir, step, weights, st)

    bar = _progress(total, step, log) if d.is_main else _NoBar(total, step, log)
    sums: dict[str, torch.Tensor | float] = {}
    n_logged, t_log, stopped_early = 0, time.perf_counter(), False
    while step < total:
        model.train()
        if d.enabled and limit_s:
            shared_clock[0] = None
            shared_clock[0] = distributed.broadcast_from_main(elapsed(), d)
        if custom:
            out = recipe.update(train_model, to_device(next(batches), device), opts, step, cfg)
            distributed.sync_buffers(model, d)
        else:
            out = {}
            opt = opts["main"]
            for i in range(cfg.grad_accum):
                batch = to_device(next(batches), device)
                # DDP all-reduces on the last micro-batch only (the others accumulate locally)
                sync = contextlib.nullcontext() if (i == cfg.grad_accum - 1 or ddp is model) else ddp.no_sync()
                if fsdp and cfg.grad_accum > 1:  # FSDP's no_sync: reduce-scatter on the last only
                    model.set_requires_gradient_sync(i == cfg.grad_accum - 1)
                with sync:
                    with autocast(device):
                        out = recipe.loss(train_model, batch)
                        loss = out["loss"]
                        pen = penalty(model, cfg.l1, cfg.l2)
                        if pen is not None:
                            loss = loss + pen
                    (loss / cfg.grad_accum).backward()
            distributed.sync_if_bypassed(ddp, d)
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                out = {**out, "grad_norm": distributed.local_value(norm)}
            opt.step()
            opt.zero_grad(set_to_none=True)
        for s in scheds.values():
            s.step()
        if ema is not None:
            ema.update(model)
        step += 1
        if limit_s and step < total and elapsed() >= limit_s:
            log(f"time budget of {cfg.max_minutes:g} min spent at step {step} (of max {total}); "
                "finishing the run")
            total = step  # the end-of-run logging, evaluation and checkpoint happen now
        # accumulate detached tensors; .item() only when logging (avoids a sync per step)
        for k, v in out.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            sums[k] = sums.get(k, 0.0) + v
        n_logged += 1

        if step % cfg.log_every == 0 or step == total:
            dt = time.perf_counter() - t_log
            sums = distributed.mean_over_ranks(sums, d, device)
            rec = {"step": step, **{f"train_{k}": float(v) / n_logged for k, v in sums.items()},
                   "lr": next(iter(opts.values())).param_groups[0]["lr"],
                   "examples": step * examples_per_step,  # seen since step 0, resumes included
                   "examples_per_s": examples_per_step * n_logged / max(dt, 1e-9)}
            if d.is_main:
                _append_jsonl(metrics_path, rec)
            _tb(writer, rec, step)
            bar.set_postfix({k.replace("train_", ""): f"{v:.4g}" for k, v in rec.items() if k != "step"})
            if not bar.interactive:
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            sums, n_logged, t_log = {}, 0, time.perf_counter()
        bar.update(1)

        if step % eval_every == 0 or step == total:
            gather()
            if eval_model is not None:
                eval_model.eval()
            ev = None
            if d.is_main:  # over the whole split, on rank 0; the others get its numbers
                with torch.no_grad(), autocast(device):
                    # counts (episodes, examples) stay integers in the log and metrics.jsonl
                    ev = {f"val_{k}": v if isinstance(v, int) else float(v)
                          for k, v in recipe.evaluate(eval_model, cfg, "val").items()
                          if isinstance(v, (int, float))}
            ev = distributed.broadcast_from_main(ev, d)
            rec = {"step": step, **ev}
            if d.is_main:
                _append_jsonl(metrics_path, rec)
            _tb(writer, rec, step)
            log("eval " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            value = ev.get(cfg.metric)
            if value is None and cfg.metric.startswith("val_"):
                raise C.ConfigError(f"metric {cfg.metric!r} is not reported by this recipe; "
                                    f"choose one of: {', '.join(ev)}")
            if _is_better(value, best, cfg.metric_mode):
                best, bad_evals, best_step = value, 0, step
                if d.is_main:
                    ckpt.save_best(out_dir, step, eval_model)
            else:
                bad_evals += 1
            if hasattr(recipe, "log_samples") and d.is_main:
                # a sample is a look at the model, not part of training: when it fails (a prompt
                # the vocabulary lacks, a full samples/ folder) the run says so and trains on
                try:
                    text = recipe.log_samples(eval_model, cfg, out_dir, step)
                except Exception as e:
                    text = (f"warning: no sample at step {step} ({e.__class__.__name__}: {e}); "
                            "training continues")
                if text:
                    log(text)
            if cfg.patience and bad_evals >= cfg.patience:
                log(f"early stopping at step {step}: {cfg.metric} did not improve for "
                    f"{bad_evals} evaluations (best {best:.4g})")
                stopped_early = True
        if step % save_every == 0 or step == total or stopped_early or step == stop_at:
            save()
        if stopped_early or step == stop_at:
            break
    bar.close()
    distributed.barrier(d)  # every rank returns once rank 0's last checkpoint is published
    if writer is not None:
        writer.close()
    if cfg.plots and d.is_main:
        from genforge.evaluate.plots import plot_curves

        plot_curves(out_dir, out_dir / "plots" / "curves.png")
    return out_dir, eval_model if eval_model is not None else model


def _check_fsdp(recipe, recipe_name: str, cfg: C.TrainConfig) -> None:
    """What sharded training does not cover, refused before anything is written."""
    why = [text for applies, text in [
        (hasattr(recipe, "update"), "its own update steps several optimizers over sub-networks"),
        (cfg.ema, "the weight average would be a second full copy on every rank; remove the ema setting"),
        (cfg.l1 or cfg.l2, "the penalty would need the whole weights on every rank; use weight_decay instead"),
    ] if applies]
    if why:
        raise C.ConfigError(f"fsdp=true does not apply to this {recipe_name} run: {why[0]} (or train "
                            "it data-parallel without fsdp)")


class _NoBar:
    """Progress without a terminal (a log file, CI, nohup): a line at least every
    `every_s` seconds, so a slow run with a large log_every still shows it is alive."""

    interactive = False

    def __init__(self, total: int, initial: int, log: Callable[[str], None], every_s: float = 30.0):
        self.total, self.n, self.log, self.every_s = total, initial, log, every_s
        self.t_last = time.perf_counter()
        self.n_last = initial

    def update(self, n):
        self.n += n
        now = time.perf_counter()
        if now - self.t_last >= self.every_s:
            rate = (self.n - self.n_last) / (now - self.t_last)
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            self.log(f"progress: step {self.n}/{self.total} ({100 * self.n / max(1, self.total):.0f}%), "
                     f"{rate:.3g} steps/s, about {left / 60:.1f} min left at this pace")
            self.t_last, self.n_last = now, self.n

    def set_postfix(self, d):
        self.t_last = time.perf_counter()  # a logged record is a sign of life too

    def close(self):
        pass


def _progress(total: int, initial: int, log: Callable[[str], None] = print):
    if not sys.stderr.isatty():
        return _NoBar(total, initial, log)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    bar.interactive = True
    return bar


def _tensorboard(out_dir: Path, enabled: bool, log):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard=true but the tensorboard package is not installed; "
            "`pip install tensorboard` (continuing without it)")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _tb(writer, rec: dict, step: int) -> None:
    if writer is not None:
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                writer.add_scalar(k, v, step)
