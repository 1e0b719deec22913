"""Data-parallel training (genforge/train/distributed.py): two processes on gloo, on a tiny
GPT over real Tiny Shakespeare text.

Each test starts two real worker processes that join one gloo process group and call the
trainer exactly as `torchrun ... -m genforge train` does (RANK/WORLD_SIZE/MASTER_* in the
environment); the CLI path through torchrun itself is the slow test at the end.

Tolerance for "2 x B/2 == 1 x B": the two runs do the same arithmetic except the order of
float additions (a mean of two half-batch means all-reduced by gloo vs one mean over the
batch), so weights agree to ~1e-6 after a few Adam steps; we allow atol 1e-5, rtol 1e-4.
A resumed run with the same number of processes is bit-identical.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "gpt", "model.n_head": 2, "model.n_embd": 16, "model.n_layer": 1,
        "model.block_size": 16, "model.dropout": 0.0, "data": "tinyshakespeare",
        "warmup_steps": 0, "eval_every": 2, "eval_batches": 1, "log_every": 1,
        "sample_tokens": 0, "plots": False, "lr": 3e-3}
ATOL, RTOL = 1e-5, 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**over):
    from genforge import config as C
    from genforge.recipes import resolve

    _, mod, _ = resolve("language-model")
    cfg = C.make_config(mod, None)
    base = TINY
    if "model" in over or "init_from" in over:  # another family, or the base run's own
        base = {k: v for k, v in TINY.items() if not k.startswith("model")}
    C.apply_overrides(cfg, {**base, **over}, mod.MODELS)
    return cfg


def _worker(rank: int, world: int, port: int, jobs: list, errors, fail_at: int | None,
            dist_timeout: float):
    """One rank: join the group, then run each (out, overrides, resume, stop_at) job in turn."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "GENFORGE_DIST_TIMEOUT": str(dist_timeout)})
    torch.set_num_threads(1)
    try:
        from genforge.recipes import get_recipe
        from genforge.train.trainer import fit

        if fail_at is not None and rank == 1:  # rank 1's data "breaks" at step fail_at
            recipe, calls = get_recipe("language-model"), [0]
            real_loss = recipe.loss

            def loss(model, batch):
                calls[0] += 1
                if calls[0] == fail_at:
                    raise RuntimeError("rank 1: a corrupt batch at step 3")
                return real_loss(model, batch)

            recipe.loss = loss
        for out, over, resume, stop_at in jobs:
            log = _log_to(Path(out).with_suffix(".rank0.log")) if rank == 0 else (lambda _: None)
            fit("language-model", _config(**over), out, resume=resume, stop_at=stop_at, log=log)
    except BaseException as e:
        errors.put((rank, f"{type(e).__name__}: {e}", traceback.format_exc()))
        raise SystemExit(1)


def _log_to(path: Path):
    def log(msg: str) -> None:
        with open(path, "a") as f:
            f.write(msg + "\n")
    return log


def _run_ranks(jobs: list, world: int = 2, fail_at: int | None = None, timeout: float = 300,
               dist_timeout: float = 120):
    """Run `jobs` on `world` spawned ranks. dist_timeout: the process group's timeout, which
    also bounds connecting the ranks (a loaded machine can start one rank tens of seconds after
    the other: 20 s failed there)."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, jobs, errors, fail_at, dist_timeout)) for r in range(world)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            raise AssertionError(f"rank did not finish within {timeout}s (a hang)")
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found, [p.exitcode for p in procs], time.perf_counter() - t0


def _single(out, resume=False, stop_at=None, **over):
    from genforge.train.trainer import fit

    return fit("language-model", _config(**over), out, resume=resume, stop_at=stop_at, log=lambda _: None)


def _weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a: dict, b: dict, exact: bool = False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=k)


def test_two_half_batches_train_the_weights_of_one_full_batch(tmp_path):
    """2 processes x batch 4 == 1 process x batch 8 (tolerance in the module docstring),
    with gradient clipping and gradient accumulation in play; only rank 0 wrote the run."""
    over = {"max_steps": 4, "grad_clip": 0.5, "grad_accum": 2}
    errors, codes, _ = _run_ranks([(tmp_path / "ddp", {**over, "batch_size": 4}, False, None)])
    assert not errors and codes == [0, 0], errors
    _single(tmp_path / "one", **over, batch_size=8)
    ddp, one = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    _assert_close(ddp, one)
    # the run directory is rank 0's alone and says what a step processed
    recs = [r for r in _metrics(tmp_path / "ddp") if "examples" in r]
    assert recs[-1]["examples"] == 4 * 2 * 2 * 4  # steps x batch x processes x grad_accum
    ev = [r for r in _metrics(tmp_path / "ddp") if "val_loss" in r]
    ev_one = [r for r in _metrics(tmp_path / "one") if "val_loss" in r]
    assert [r["step"] for r in ev] == [2, 4]
    assert ev[-1]["val_loss"] == pytest.approx(ev_one[-1]["val_loss"], abs=1e-4)


def test_resume_is_exact_under_ddp_and_across_process_counts(tmp_path):
    """A 2-process run stopped at step 2 and resumed with 2 processes is bit-identical to one
    that ran straight through; resumed as 1 process (batch 8) it matches within tolerance,
    and a 1-process run resumed with 2 processes likewise."""
    # each job in fresh processes, as torchrun runs them (re-creating a process group on the
    # same port inside one process could hang in init_process_group's rendezvous)
    for job in [(tmp_path / "straight", {"max_steps": 4, "batch_size": 4}, False, None),
                (tmp_path / "resumed", {"max_steps": 4, "batch_size": 4}, False, 2),
                (tmp_path / "resumed", {"max_steps": 4, "batch_size": 4}, True, None),
                (tmp_path / "to-one", {"max_steps": 4, "batch_size": 4}, False, 2)]:
        errors, codes, _ = _run_ranks([job])
        assert not errors and codes == [0, 0], errors
    straight = _weights(tmp_path / "straight")
    _assert_close(_weights(tmp_path / "resumed"), straight, exact=True)
    _single(tmp_path / "to-one", resume=True, max_steps=4, batch_size=8)
    _assert_close(_weights(tmp_path / "to-one"), straight)
    # and back: one process for 2 steps, then two processes to the end
    _single(tmp_path / "from-one", stop_at=2, max_steps=4, batch_size=8)
    errors, codes, _ = _run_ranks([(tmp_path / "from-one", {"max_steps": 4, "batch_size": 4}, True, None)])
    assert not errors and codes == [0, 0], errors
    _assert_close(_weights(tmp_path / "from-one"), straight)


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    """Rank 1 raises at its third batch; rank 0, blocked in the gradient all-reduce, must not
    hang: it ends within seconds (the peer's group closes; the group timeout is the backstop)
    and the job reports rank 1's own error."""
    errors, codes, dt = _run_ranks([(tmp_path / "run", {"max_steps": 6, "batch_size": 4}, False, None)],
                                   fail_at=3, timeout=60, dist_timeout=20)
    assert codes == [1, 1]
    by_rank = {r: msg for r, msg, _ in errors}
    assert by_rank[1] == "RuntimeError: rank 1: a corrupt batch at step 3"
    assert 0 in by_rank  # rank 0 ended with a communication error instead of waiting forever
    assert dt < 45


FSDP = {"fsdp": True, "model.n_layer": 2, "max_steps": 4, "grad_clip": 0.5, "grad_accum": 2}


def test_fsdp_trains_the_weights_of_one_process_and_resumes_either_way(tmp_path):
    """fsdp=true (FSDP2 fully_shard: two block units + the root, tied embedding/head): two
    sharded ranks x batch 4 train what one process does with batch 8. Steps 1-2 sharded and
    3-4 in one process (the checkpoint's optimizer state in the one-process layout), and steps
    1-2 in one process and 3-4 sharded, both end at the straight one-process weights."""
    from genforge.train.trainer import fit

    said: list[str] = []  # one process: fsdp has nothing to shard, and the run says so
    fit("language-model", _config(**FSDP, batch_size=8), tmp_path / "one", log=said.append)
    assert any("as one process this run trains unsharded" in m for m in said)
    errors, codes, _ = _run_ranks([(tmp_path / "f2o", {**FSDP, "batch_size": 4}, False, 2)])
    assert not errors and codes == [0, 0], errors
    assert "sharded (FSDP)" in (tmp_path / "f2o.rank0.log").read_text()
    _single(tmp_path / "f2o", resume=True, **FSDP, batch_size=8)
    _single(tmp_path / "o2f", stop_at=2, **FSDP, batch_size=8)
    errors, codes, _ = _run_ranks([(tmp_path / "o2f", {**FSDP, "batch_size": 4}, True, None)])
    assert not errors and codes == [0, 0], errors
    one = _weights(tmp_path / "one")
    _assert_close(_weights(tmp_path / "f2o"), one)
    _assert_close(_weights(tmp_path / "o2f"), one)
    # rank 0 evaluated its gathered copy: the numbers one process reports
    ev = [r for r in _metrics(tmp_path / "o2f") if "val_loss" in r]
    ev_one = [r for r in _metrics(tmp_path / "one") if "val_loss" in r]
    assert [r["step"] for r in ev] == [2, 4]
    assert ev[-1]["val_loss"] == pytest.approx(ev_one[-1]["val_loss"], abs=1e-4)


def test_fsdp_lora_fine_tuning_of_a_llama_matches_one_process(tmp_path):
    """The case FSDP is for: fine-tuning a pretrained Llama, here with LoRA (frozen base
    shards, trainable adapters); the run saves its adapters only, as a one-process run does."""
    base = tmp_path / "base"
    llama = {"model": "llama", "model.n_head": 2, "model.n_kv_head": 1, "model.d_model": 16,
             "model.intermediate": 32, "model.n_layer": 2, "model.block_size": 16}
    _single(base, **llama, max_steps=1, batch_size=4)
    lora = {**{k: v for k, v in FSDP.items() if k != "model.n_layer"}, "init_from": str(base),
            "lora_r": 2, "lora_alpha": 4}
    errors, codes, _ = _run_ranks([(tmp_path / "sharded", {**lora, "batch_size": 4}, False, None)])
    assert not errors and codes == [0, 0], errors
    _single(tmp_path / "one", **lora, batch_size=8)
    sharded, one = _weights(tmp_path / "sharded"), _weights(tmp_path / "one")
    assert sharded and all("lora" in k for k in sharded)
    _assert_close(sharded, one)


def test_fsdp_refuses_what_it_does_not_shard():
    from genforge import config as C
    from genforge.recipes import get_recipe
    from genforge.train.trainer import _check_fsdp

    with pytest.raises(C.ConfigError, match="fsdp=true does not apply.*ema"):
        _check_fsdp(get_recipe("language-model"), "language-model", _config(fsdp=True, ema=0.99))
    with pytest.raises(C.ConfigError, match="fsdp=true does not apply.*own update"):
        _check_fsdp(get_recipe("image-generate"), "image-generate", _config(fsdp=True))


@pytest.mark.slow
def test_cli_nproc_launches_torchrun_and_resumes_single_process(tmp_path):
    """`genforge train ... --nproc 2` through torchrun; then `--resume` as one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = [a for k, v in {**TINY, "max_steps": 2, "batch_size": 4}.items() for a in ("--set", f"{k}={v}")]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "genforge", "train", "language-model", *sets, "--out", str(run)]
    p = subprocess.run(cmd + ["--nproc", "2"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "data-parallel over 2 processes (global batch 8)" in p.stdout
    assert p.stdout.count("done in") == 1  # rank 0 alone talks
    p = subprocess.run([sys.executable, "-m", "genforge", "train", "--resume", str(run), "--set", "max_steps=3",
                        "--set", "batch_size=8"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resumed" in p.stdout and "global batch was 8" not in p.stdout


def test_cli_nproc_refuses_a_recipe_that_cannot_split_its_batches_before_launching(tmp_path):
    """An RL recipe under --nproc: one error from the launcher, no torchrun, nothing written."""
    p = subprocess.run([sys.executable, "-m", "genforge", "train", "dqn-cartpole", "--nproc", "2",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert out.count("cannot train data-parallel") == 1, out
    assert "launching" not in out and "Traceback" not in out and not (tmp_path / "run").exists()


def test_gpu_policy_is_bf16_only_where_supported_and_cpu_stays_fp32():
    """The CUDA path (bf16 autocast where the GPU has it, TF32, pinned copies) is decided in
    genforge/train/device.py; what can be checked without a GPU is the policy itself."""
    from genforge.train.device import autocast, autocast_dtype, to_device

    cuda = torch.device("cuda", 0)
    assert autocast_dtype(cuda, bf16_supported=True) is torch.bfloat16
    assert autocast_dtype(cuda, bf16_supported=False) is None  # fp32 (+TF32), no fp16 scaler
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    with autocast(cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    batch = {"x": torch.ones(3), "y": [torch.zeros(2)]}
    moved = to_device(batch, cpu)
    assert moved["x"].data_ptr() == batch["x"].data_ptr()  # no copy on the same device
