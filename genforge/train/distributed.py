"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

`torchrun --nproc_per_node N -m genforge train ...` (or `genforge train ... --nproc N`, which
launches exactly that) starts N copies of the same command; torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and `setup` reads them. Nothing here is home-made
communication: gradients are averaged by DDP (loss recipes) or by one all-reduce per
optimizer step (recipes with their own `update`), both torch.distributed collectives.

What a distributed run means, in one place:
- `batch_size` is per process; the global batch of step s is the batch one process would
  draw with `batch_size x N` at step s, and rank r takes its r-th slice (`shard`). The train
  stream stays deterministic in (seed, step), so resuming is exact, and 2 x B/2 trains the
  same weights as 1 x B up to float reduction order.
- Only rank 0 writes the run directory (config, checkpoints, metrics, plots, samples).
- Evaluation runs on rank 0 over the whole split (the numbers are those a single process
  would report); rank 0 then broadcasts them so every rank takes the same early-stopping
  decision. Logged train metrics are averaged over the ranks.
- The checkpoint format is unchanged (weights are saved from the unwrapped module), so a
  run can be resumed with another number of processes.
- `fsdp=true` shards instead of replicating (FSDP2 `fully_shard`): each block of the model's
  layer stacks is gathered just before its forward and freed after, gradients are
  reduce-scattered, and each rank keeps only its shard of the weights, gradients and
  optimizer state. Rank 0 also holds one plain copy of the weights (no gradients, no
  optimizer state), refreshed from the shards before each evaluation and save, so
  evaluation, samples and checkpoints are exactly the DDP path's; checkpoints hold the whole
  model and optimizer in the usual layout (resumable with any number of processes, sharded
  or not).
- gloo on CPU, NCCL on CUDA, chosen from the device. A rank that raises exits with its
  error; torchrun then stops the other ranks, and the process-group timeout
  (GENFORGE_DIST_TIMEOUT seconds, default 1800) ends a collective whose peer vanished.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group (and tears it down)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device_name: str) -> Dist:
    """Join the process group torchrun described in the environment (a no-op for one process).
    The backend follows the device: NCCL for CUDA, gloo for CPU."""
    world = world_from_env()
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():  # a caller set it up (a test, a notebook): use it as it is
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=float(os.environ.get("GENFORGE_DIST_TIMEOUT", 1800)))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=timeout)
    return Dist(rank, world, local_rank, owns_group=True)


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(d: Dist, device: torch.device) -> torch.device:
    """Each rank on a CUDA machine gets its own GPU (LOCAL_RANK)."""
    if d.enabled and device.type == "cuda":
        return torch.device("cuda", d.local_rank)
    return device


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def global_batch_config(cfg, d: Dist):
    """The config whose train stream is the global batch: batch_size x world."""
    if not d.enabled:
        return cfg
    import dataclasses

    return dataclasses.replace(cfg, batch_size=cfg.batch_size * d.world)


def _batch_sizes(batch: Any, out: set[int]) -> None:
    if isinstance(batch, torch.Tensor):
        if batch.dim() > 0:
            out.add(batch.shape[0])
    elif isinstance(batch, dict):
        for v in batch.values():
            _batch_sizes(v, out)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            _batch_sizes(v, out)


def _take(batch: Any, rank: int, world: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.tensor_split(world)[rank] if batch.dim() > 0 else batch
    if isinstance(batch, dict):
        return {k: _take(v, rank, world) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_take(v, rank, world) for v in batch)
    return batch


def shard(batches: Iterator, d: Dist, recipe_name: str) -> Iterator:
    """Rank r's slice of each global batch, along dim 0 of every tensor. Every rank draws the
    same global batch (the stream is deterministic in (seed, step)), so no data is exchanged
    and a resumed run picks up at the same global batch whatever the number of processes."""
    if not d.enabled:
        yield from batches
        return
    for batch in batches:
        sizes: set[int] = set()
        _batch_sizes(batch, sizes)
        if len(sizes) != 1:
            raise RuntimeError(f"cannot split the {recipe_name} recipe's batches across {d.world} "
                               f"processes: its tensors do not share one batch dimension (sizes "
                               f"{sorted(sizes)}); train it as one process (without --nproc/torchrun)")
        n = sizes.pop()
        if n < d.world:
            raise RuntimeError(f"a batch of {n} examples cannot be split across {d.world} processes; "
                               "raise batch_size or use fewer processes")
        yield _take(batch, d.rank, d.world)


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that lets a recipe's `loss` read its model's attributes (`model.cfg`, a tokenizer)
    as it does on the plain module, and records whether the step's forward went through DDP:
    a loss that calls only other methods (`model.encode(...)`) bypasses DDP's forward, whose
    gradient hooks then stay idle, so the trainer all-reduces that step's gradients itself
    (`sync_if_bypassed`) instead of letting the ranks drift apart silently."""

    forwarded = False

    def forward(self, *args, **kwargs):
        self.forwarded = True
        return super().forward(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def _check_trainable(model: torch.nn.Module) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise RuntimeError("nothing to train: every parameter is frozen")


def wrap_ddp(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DDP over the trainable parameters (frozen ones, e.g. a LoRA base, are not registered,
    so they neither take part in the all-reduce nor count as unused)."""
    if not d.enabled:
        return model
    _check_trainable(model)
    ids = [device.index] if device.type == "cuda" else None
    return _DDP(model, device_ids=ids)


def sync_if_bypassed(ddp: torch.nn.Module, d: Dist) -> None:
    """After a step's backward: all-reduce the gradients when DDP's forward was not used."""
    if not isinstance(ddp, _DDP):
        return
    if not ddp.forwarded:
        _average([p.grad for p in ddp.module.parameters() if p.grad is not None], d)
    ddp.forwarded = False


def _average(grads: list, d: Dist) -> None:
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def average_gradients_before_step(opts: dict, d: Dist) -> None:
    """Recipes with their own `update` (GAN: two optimizers over two sub-networks) call their
    sub-modules directly, past any wrapper's forward, so DDP cannot see their backward passes.
    Instead each optimizer averages its parameters' gradients over the ranks just before it
    steps: the same mean-of-shards DDP computes, without the overlap with backward. (A
    gradient clip inside such an update applies to each rank's own gradient.)"""
    if not d.enabled:
        return

    def hook(opt, args, kwargs):
        _average([p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None], d)

    for opt in opts.values():
        opt.register_step_pre_hook(hook)


def sync_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Buffers (BatchNorm running statistics) from rank 0, as DDP does each forward."""
    if d.enabled:
        for b in model.buffers():
            dist.broadcast(b, 0)


def mean_over_ranks(values: dict, d: Dist, device: torch.device) -> dict:
    """Logged train metrics averaged over the ranks (one all-reduce per log line)."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / d.world for k, v in zip(keys, t.tolist())}


def broadcast_from_main(obj: Any, d: Dist) -> Any:
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------
# FSDP (fsdp=true): weights, gradients and optimizer state sharded over the ranks


def _stacks(model: nn.Module) -> list[nn.Module]:
    """The blocks of the model's outermost layer stacks (ModuleLists of 2+ modules): GPT and
    Llama blocks, encoder and decoder layers. Each becomes one FSDP unit."""
    blocks: list[nn.Module] = []
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, nn.ModuleList) and len(m) > 1:
            inside.append(name)
            blocks.extend(m)
    return blocks


def shard_model(model: nn.Module) -> None:
    """fully_shard each block of the layer stacks, then the root (embeddings, head, the
    rest); the model's parameters become DTensor shards, in place."""
    from torch.distributed.fsdp import fully_shard

    _check_trainable(model)
    for block in _stacks(model):
        fully_shard(block)
    fully_shard(model)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict:
    """Collective (every rank calls it): the whole state dict on rank 0, as CPU tensors
    under the plain module's names; {} on the other ranks."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def _param_order(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order torch's `Optimizer.state_dict()` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Collective: the optimizer's whole state on rank 0 in `Optimizer.state_dict()`'s own
    layout (parameters numbered in group order), what a one-process run saves, so either
    kind of run resumes the other; {} on the other ranks."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt, options=_full_options())
    if not osd:
        return {}
    index = {n: i for i, n in enumerate(_param_order(model, opt))}
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Every rank: a checkpoint's optimizer state (`Optimizer.state_dict()` layout, whole)
    into the sharded optimizer; each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    order = _param_order(model, opt)
    named = {"state": {order[i]: s for i, s in state["state"].items()},
             "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, named, options=StateDictOptions(full_state_dict=True))


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor result (the gradient norm of sharded gradients) as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
