"""Training speed side by side (issue 20 item 3), the programs alternated round by round so
they share the machine's noise, each in its own process.

  gpt   genforge's trainer (`genforge train language-model`, the standard small config of
        bench_lm.py: 4 layers, 4 heads, 128 wide, context 64, batch 12, dropout 0, no biases,
        char-level Tiny Shakespeare) against nanoGPT's own `train.py` with the same config.
        Each round runs each program for --iters iterations; ms/iter is the median of the
        per-iteration times each program logs (after --skip warm-up iterations). `--full`
        adds one run of --full-iters (2000) iterations of each with its final val loss.
  gpt-floor  where a faster GPT step would have to come from: each round runs genforge's
        trainer and nanoGPT (--iters each, as `gpt`), then, in a fresh process, the same
        model's step in a plain loop, nanoGPT's own model and optimizer (its model.py,
        configure_optimizers) in the same kind of loop, the two alternating in chunks, and
        the genforge step's own matrix products replayed alone
        (every aten.mm the step calls, same shapes and strides, new data; then with the
        attention kernels too), with the step's FLOPs from torch's FlopCounterMode. The
        replay is the time of the arithmetic alone, with nothing between the products: a
        floor for any program that does this step's products with these kernels.
  cnn   the `cnn-fashion` preset through the trainer against a plain PyTorch loop over a
        `DataLoader` of the textbook network (conv-BN-ReLU-pool, nn.Dropout: the same
        parameters and function; same batch size, optimizer, augmentation off on both sides,
        same threads), and against the same loop over genforge's CNN module: images/s.

nanoGPT runs from a local copy that is not part of genforge:
  git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
  GENFORGE_DATA=/work/shared/data python bench/bench_train_speed.py gpt cnn --nanogpt /tmp/nanoGPT
The bench writes nanoGPT's shakespeare_char data (train.bin, val.bin, meta.pkl, the same
encoding as its data/shakespeare_char/prepare.py) from GENFORGE_DATA's tinyshakespeare into
a scratch folder and runs nanoGPT there; without --nanogpt (or when the path lacks
train.py) the gpt part says so and is skipped.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_lm import STANDARD, hardware, load  # noqa: E402

GPT = {**STANDARD, "model.bias": False, "model.tie_weights": True}  # nanoGPT's exact model


def _text() -> str:
    from genforge.data import registry

    return registry.find("tinyshakespeare", "input.txt").read_text()


def prepare_nanogpt_data(work: Path) -> None:
    """nanoGPT's data/shakespeare_char layout: sorted characters, uint16 ids, 90/10 split."""
    data = _text()
    chars = sorted(set(data))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(data)
    ids = np.array([stoi[c] for c in data], dtype=np.uint16)
    d = work / "data" / "shakespeare_char"
    d.mkdir(parents=True, exist_ok=True)
    ids[: int(n * 0.9)].tofile(d / "train.bin")
    ids[int(n * 0.9):].tofile(d / "val.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def run_nanogpt(nano: Path, work: Path, iters: int, decay_iters: int, env: dict, eval_iters: int = 1,
                compile: bool = False) -> tuple[list[float], float | None]:
    # train.py reads configurator.py and data/ from its working directory
    cfgr = work / "configurator.py"
    if not cfgr.exists():
        cfgr.write_text((nano / "configurator.py").read_text())
    args = ["--dataset=shakespeare_char", "--device=cpu", f"--compile={compile}", "--dtype=float32",
            "--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=64", "--batch_size=12",
            "--dropout=0.0", "--bias=False", "--learning_rate=1e-3", "--min_lr=1e-4",
            "--warmup_iters=100", f"--lr_decay_iters={decay_iters}", f"--max_iters={iters}",
            f"--eval_interval={iters}", f"--eval_iters={eval_iters}", "--log_interval=1",
            "--gradient_accumulation_steps=1", "--always_save_checkpoint=False",
            f"--out_dir={work / 'out'}", "--beta2=0.99", "--weight_decay=0.1"]
    p = subprocess.run([sys.executable, str(nano / "train.py"), *args], cwd=work, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    times = [float(m.group(2)) for m in re.finditer(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", p.stdout)
             if int(m.group(1)) > 0]
    vals = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", p.stdout)
    return times, float(vals[-1]) if vals else None


def run_genforge(iters: int, env: dict, out: Path, eval_batches: int,
                 compile: bool = False) -> tuple[list[float], float | None]:
    sets = {**GPT, "compile": str(compile).lower(), "max_steps": iters, "log_every": 1, "eval_every": iters, "eval_batches": eval_batches,
            "plots": False, "sample_tokens": 0, "weight_decay": 0.1, "betas": "(0.9,0.99)"}
    cmd = [sys.executable, "-m", "genforge", "train", "language-model", "--out", str(out), "--overwrite"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"genforge failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    import json

    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [1000 * GPT["batch_size"] / r["examples_per_s"] for r in recs if "examples_per_s" in r]
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    return times, vals[-1] if vals else None


def nanogpt_setup(a, part: str) -> tuple[Path, dict, Path] | None:
    """(nanoGPT's folder, the environment both programs run in, a scratch folder holding
    nanoGPT's data), or None after saying the part is skipped when --nanogpt is missing."""
    nano = Path(a.nanogpt) if a.nanogpt else None
    if nano is None or not (nano / "train.py").is_file():
        print(f"\n### {part}: skipped\n\nnanoGPT not found: pass --nanogpt PATH to a local copy "
              "(git clone https://github.com/karpathy/nanoGPT PATH)")
        return None
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    work = Path(tempfile.mkdtemp(prefix="nanogpt-work-"))
    prepare_nanogpt_data(work)
    return nano, env, work


def part_gpt(a) -> None:
    setup = nanogpt_setup(a, "gpt")
    if setup is None:
        return
    nano, env, work = setup

    def pair(r: int, iters: int, decay_iters: int, eval_batches: int) -> dict:
        """One round: both programs, genforge first in even rounds -> {who: (times, val loss)}."""
        res = {}
        for who in (["genforge", "nanogpt"] if r % 2 == 0 else ["nanogpt", "genforge"]):
            if who == "genforge":
                res[who] = run_genforge(iters, env, work / f"gf-{iters}", eval_batches, compile=a.compile)
            else:
                res[who] = run_nanogpt(nano, work, iters, decay_iters, env, eval_batches, compile=a.compile)
        return res

    print(f"\n### gpt: ms/iter, {a.iters} iterations per program per round (median after "
          f"{a.skip}), alternating{', both torch.compile-d' if a.compile else ''}\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; {hardware()}; {a.threads} thread(s); {load()} at start\n")
    print("| round | genforge ms/iter | nanoGPT ms/iter | nanoGPT / genforge |")
    print("|---|---|---|---|")
    ratios = []
    for r in range(a.rounds):
        res = {who: statistics.median(t[a.skip:]) for who, (t, _) in pair(r, a.iters, 2000, 1).items()}
        ratios.append(res["nanogpt"] / res["genforge"])
        print(f"| {r + 1} | {res['genforge']:.1f} | {res['nanogpt']:.1f} | {ratios[-1]:.2f}x |", flush=True)
    if ratios:
        print(f"\nmedian ratio nanoGPT/genforge: {statistics.median(ratios):.2f}x (target >= 1.3x); "
              f"{load()} at end")
    if a.full:
        print(f"\n#### {a.full_iters} iterations each, then val loss on 200 batches; "
              f"{a.full_rounds} round(s), alternating\n")
        print("| round | genforge ms/iter | genforge val loss | nanoGPT ms/iter | nanoGPT val loss | nanoGPT / genforge |")
        print("|---|---|---|---|---|---|")
        for r in range(a.full_rounds):
            res = pair(r, a.full_iters, a.full_iters, 200)
            (tg, vg), (tn, vn) = res["genforge"], res["nanogpt"]
            mg, mn = statistics.median(tg), statistics.median(tn)
            print(f"| {r + 1} ({'genforge' if r % 2 == 0 else 'nanoGPT'} first) | {mg:.1f} | {vg:.4f} | "
                  f"{mn:.1f} | {vn:.4f} | {mn / mg:.2f}x |", flush=True)
        print(f"\n{load()} at end")


MM_OPS = ("aten.mm.default", "aten.addmm.default", "aten.bmm.default")
ATTN_OPS = ("aten._scaled_dot_product_flash_attention_for_cpu.default",
            "aten._scaled_dot_product_flash_attention_for_cpu_backward.default")


def gpt_floor_one(a) -> dict:
    """One process: the standard GPT step (genforge's model, clip 1.0, fused AdamW, batch
    12 x 64) and nanoGPT's own step in plain loops, alternating in chunks; the step's FLOPs;
    its matrix products / attention kernels replayed alone."""
    import json

    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from genforge.models.transformer import GPT as GPTModel, GPTConfig

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    V, B, T = 65, GPT["batch_size"], GPT["model.block_size"]
    model = GPTModel(GPTConfig(vocab_size=V, block_size=T, n_layer=GPT["model.n_layer"],
                          n_head=GPT["model.n_head"], n_embd=GPT["model.n_embd"], bias=False,
                          tie_weights=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True)
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step():
        loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    nano_step = _nanogpt_step(a.nanogpt, V, B, T) if a.nanogpt else None

    calls: list = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if str(func) in MM_OPS + ATTN_OPS:
                spec = [("T", tuple(t.shape), t.stride(), t.dtype) if isinstance(t, torch.Tensor) else ("V", t)
                        for t in args]
                calls.append((func, spec, dict(kwargs)))
            return func(*args, **kwargs)

    for _ in range(3):
        step()
    with Record():
        step()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    mm_flops = sum(v for k, v in fc.get_flop_counts()["Global"].items() if str(k).startswith(("aten.mm", "aten.addmm", "aten.bmm")))

    def materialise(spec):
        out = []
        for item in spec:
            if item[0] == "T":
                _, shape, stride, dtype = item
                t = torch.empty_strided(shape, stride, dtype=dtype)
                out.append(t.normal_() if dtype.is_floating_point else t.zero_())
            else:
                out.append(item[1])
        return out

    replays = {
        "mm": [(f, materialise(sp), kw) for f, sp, kw in calls if str(f) in MM_OPS],
        "mm+attn": [(f, materialise(sp), kw) for f, sp, kw in calls],
    }

    def timed(fn, n):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(1000 * (time.perf_counter() - t0))
        return statistics.median(ts[a.skip:])

    def replay(name):
        def run():
            for f, args, kw in replays[name]:
                f(*args, **kw)
        return run

    n = max(a.iters, a.skip + 20)
    # the two programs' steps alternate in chunks, so they share this process's noise
    steps = {"genforge": [], "nanogpt": []}
    for _ in range(5):
        steps["genforge"].append(timed(step, max(n // 5, a.skip + 5)))
        if nano_step is not None:
            steps["nanogpt"].append(timed(nano_step, max(n // 5, a.skip + 5)))
    res = {"step_ms": statistics.median(steps["genforge"]),
           "nano_step_ms": statistics.median(steps["nanogpt"]) if nano_step else float("nan"),
           "mm_ms": timed(replay("mm"), n), "mm_attn_ms": timed(replay("mm+attn"), n),
           "gflop": flops / 1e9, "mm_gflop": mm_flops / 1e9, "n_mm": len(replays["mm"]),
           "n_attn": len(replays["mm+attn"]) - len(replays["mm"])}
    print(json.dumps(res))
    return res


def _nanogpt_step(nano: str, V: int, B: int, T: int):
    """nanoGPT's own training step for the standard config, as its train.py runs it on the CPU
    in fp32: its GPT (model.py), its configure_optimizers (AdamW; fused only on CUDA), grad
    clip 1.0, zero_grad(set_to_none=True). None when the copy has no model.py."""
    import contextlib
    import importlib.util
    import io

    path = Path(nano) / "model.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter counts
        model = mod.GPT(mod.GPTConfig(block_size=T, vocab_size=V, n_layer=GPT["model.n_layer"],
                                      n_head=GPT["model.n_head"], n_embd=GPT["model.n_embd"],
                                      dropout=0.0, bias=False))
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def part_gpt_floor(a) -> None:
    import json

    setup = nanogpt_setup(a, "gpt-floor")
    if setup is None:
        return
    nano, env, work = setup
    print(f"\n### gpt-floor: the standard GPT step against the time of its own arithmetic, "
          f"{a.iters} iterations per program per round (median after {a.skip})\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; {hardware(a.threads)}; {load()} at start\n")
    print("| round | genforge trainer | nanoGPT train.py | train.py / trainer | genforge step, plain loop "
          "| nanoGPT step, plain loop | nanoGPT / genforge, plain loops | matrix products alone | "
          "+ attention kernels | nanoGPT train.py / (products + attention) | products' GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in range(a.rounds):
        order = ["genforge", "nanogpt", "floor"] if r % 2 == 0 else ["floor", "nanogpt", "genforge"]
        res = {}
        for who in order:
            if who == "genforge":
                res[who] = statistics.median(run_genforge(a.iters, env, work / "gf", 1)[0][a.skip:])
            elif who == "nanogpt":
                res[who] = statistics.median(run_nanogpt(nano, work, a.iters, 2000, env, 1)[0][a.skip:])
            else:
                p = subprocess.run([sys.executable, __file__, "gpt-floor-one", "--threads", str(a.threads),
                                    "--iters", str(a.iters), "--skip", str(a.skip), "--nanogpt", str(nano)],
                                   env=env, capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"gpt-floor-one failed:\n{p.stderr[-2000:]}")
                res[who] = json.loads(p.stdout.strip().splitlines()[-1])
        f = res["floor"]
        print(f"| {r + 1} | {res['genforge']:.1f} | {res['nanogpt']:.1f} | {res['nanogpt'] / res['genforge']:.2f}x | "
              f"{f['step_ms']:.1f} | {f['nano_step_ms']:.1f} | {f['nano_step_ms'] / f['step_ms']:.2f}x | "
              f"{f['mm_ms']:.1f} | {f['mm_attn_ms']:.1f} | {res['nanogpt'] / f['mm_attn_ms']:.2f}x | "
              f"{f['mm_gflop'] / f['mm_ms'] * 1000:.0f} |", flush=True)
    print(f"\nms per iteration (ratios: x). One step: {f['gflop']:.2f} GFLOP ({f['mm_gflop']:.2f} in "
          f"{f['n_mm']} matrix products, {f['n_attn']} attention kernel calls); {load()} at end")


def textbook_cnn(cfg) -> torch.nn.Module:
    """The cnn-fashion network as pytorch/examples and Keras write it: conv-BN-ReLU-pool per
    stage and nn.Dropout, with genforge CNN's parameter names (`features.*`, `head.*`), so one
    state_dict loads into both and they compute the same function."""
    nn, m = torch.nn, cfg.model_cfg
    feats, c, side = [], m.in_channels, m.image_size
    for i, out in enumerate(m.channels):
        feats += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        if i < len(m.channels) - 1:
            feats.append(nn.MaxPool2d(2))
            side //= 2
        c = out
    head = nn.Sequential(nn.Flatten(), nn.Dropout(m.dropout), nn.Linear(c * side * side, m.dense),
                         nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.dense, m.n_classes))
    return _Textbook(nn.Sequential(*feats), head)


class _Textbook(torch.nn.Module):
    def __init__(self, features: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _cnn_cfg(a):
    from genforge import config as C
    from genforge.recipes import resolve

    _, mod, preset = resolve("cnn-fashion")
    over = {"max_steps": a.cnn_steps, "log_every": 10, "eval_every": a.cnn_steps, "eval_batches": 1,
            "plots": False, "crop_pad": 0, "flip": False}
    cfg = C.make_config(mod, preset)
    C.apply_overrides(cfg, over, mod.MODELS)
    return cfg


def cnn_rate(a, who: str) -> float:
    """images/s of one program, in this process: `genforge` (the trainer), `textbook` (a plain
    DataLoader loop of textbook_cnn) or `module` (the same loop of genforge's CNN module)."""
    from genforge.recipes import get_recipe
    from genforge.train.optim import make_optimizer

    torch.set_num_threads(a.threads)
    cfg = _cnn_cfg(a)
    if who == "genforge":
        from genforge.train.trainer import fit

        with tempfile.TemporaryDirectory() as d:
            fit("image-classify", cfg, Path(d) / "run", log=lambda _: None)
            import json

            recs = [json.loads(x) for x in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
        return statistics.median(r["examples_per_s"] for r in recs if "examples_per_s" in r)
    recipe = get_recipe("image-classify")
    m = recipe.build(cfg)  # also fills cfg.model_cfg's data-dependent sizes
    if who == "textbook":
        m = textbook_cnn(cfg)
    xs, ys = [], []
    for i, (x, y) in enumerate(recipe.batches(cfg, "train")):
        xs.append(x)
        ys.append(y)
        if len(xs) * cfg.batch_size >= 60000 or i > 470:
            break
    ds = torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))
    opt = make_optimizer(m, cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    m.train()
    times, it, t = [], iter(loader), time.perf_counter()
    for s in range(a.cnn_steps):
        x, y = next(it)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (s + 1) % 10 == 0:
            now = time.perf_counter()
            times.append(10 * cfg.batch_size / (now - t))
            t = now
    return statistics.median(times)


def part_cnn(a) -> None:
    """cnn-fashion: the trainer against plain DataLoader loops of the textbook network (the
    peer) and of genforge's own CNN module (what the trainer alone adds); each measurement in
    a fresh process, the order rotating round by round."""
    from genforge.recipes import get_recipe

    cfg = _cnn_cfg(a)
    model = get_recipe("image-classify").build(cfg).eval()
    book = textbook_cnn(cfg).eval()
    book.load_state_dict(model.state_dict())  # strict: the same parameters, by name and shape
    with torch.no_grad():
        mc = cfg.model_cfg
        probe = torch.randn(256, mc.in_channels, mc.image_size, mc.image_size)
        same = torch.allclose(book(probe), model(probe), rtol=1e-4, atol=1e-5)

    def rate(who: str) -> float:
        cmd = [sys.executable, __file__, "cnn-one", "--who", who, "--threads", str(a.threads),
               "--cnn-steps", str(a.cnn_steps)]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
        if p.returncode != 0:
            raise SystemExit(f"{who} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return float(p.stdout.split()[-1])

    print(f"\n### cnn-fashion: images/s, {a.cnn_steps} steps of batch {cfg.batch_size} each, alternating\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; {hardware()}; {load()} at start")
    print(f"textbook network and genforge's CNN, one state_dict: the same outputs (eval, 256 random "
          f"images): {same}\n")
    print("| round | genforge images/s | plain loop, textbook network | genforge / textbook loop "
          "| plain loop, genforge's CNN module | genforge / module loop |")
    print("|---|---|---|---|---|---|")
    ratios, ratios_mod = [], []
    order = ["genforge", "textbook", "module"]
    for r in range(a.rounds):
        got = {who: rate(who) for who in order[r % 3:] + order[:r % 3]}
        g, p, q = got["genforge"], got["textbook"], got["module"]
        ratios.append(g / p)
        ratios_mod.append(g / q)
        print(f"| {r + 1} | {g:.0f} | {p:.0f} | {ratios[-1]:.2f}x | {q:.0f} | {ratios_mod[-1]:.2f}x |",
              flush=True)
    print(f"\nmedian ratio against the textbook loop: {statistics.median(ratios):.2f}x (target >= 1.5x); "
          f"against a plain loop of genforge's module (the trainer alone): "
          f"{statistics.median(ratios_mod):.2f}x; {load()} at end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", choices=["gpt", "gpt-floor", "gpt-floor-one", "cnn", "cnn-one"],
                    help="cnn-one: one cnn measurement (--who), the images/s printed last")
    ap.add_argument("--who", choices=["genforge", "textbook", "module"], default="genforge")
    ap.add_argument("--nanogpt", help="a local copy of github.com/karpathy/nanoGPT")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--skip", type=int, default=10, help="warm-up iterations left out of the median")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="intra-op threads of both programs (OMP_NUM_THREADS); on a machine "
                         "shared with other jobs use 1: spinning OpenMP threads that lose their "
                         "core slow a step down many times")
    ap.add_argument("--full", action="store_true",
                    help="also --full-rounds pairs of --full-iters runs, each with its val loss")
    ap.add_argument("--full-iters", type=int, default=2000)
    ap.add_argument("--full-rounds", type=int, default=2, help="--full: rounds, the order alternating")
    ap.add_argument("--cnn-steps", type=int, default=60)
    ap.add_argument("--compile", action="store_true",
                    help="gpt: both programs under torch.compile (genforge compile=true, nanoGPT --compile=True)")
    a = ap.parse_args()
    if "gpt" in a.parts:
        part_gpt(a)
    if "gpt-floor" in a.parts:
        part_gpt_floor(a)
    if "gpt-floor-one" in a.parts:
        gpt_floor_one(a)
    if "cnn" in a.parts:
        part_cnn(a)
    if "cnn-one" in a.parts:
        print(f"{cnn_rate(a, a.who):.1f}")


if __name__ == "__main__":
    main()
