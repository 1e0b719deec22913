"""Translation benchmark (issue 19): train the Multi30k presets, then score them on
test_2016_flickr. Prints one table: BLEU / chrF greedy and beam 5 (detokenised sacrebleu),
training tokens/s (source + target tokens, padding excluded), translation sentences/s (batches
of 64, beam 5) and training minutes.

  GENFORGE_DATA=/work/shared/data python bench/bench_seq2seq.py                 # both presets, 60 min each
  GENFORGE_DATA=/work/shared/data python bench/bench_seq2seq.py --minutes 2 --test-sentences 200  # smoke
  GENFORGE_DATA=/work/shared/data python bench/bench_seq2seq.py --runs runs/a runs/b   # score existing runs

On a shared machine set OMP_NUM_THREADS to the cores actually free: oversubscribed torch
threads spin and ran 3-5x slower than one thread here. Run it under the shared lock (`flock /tmp/genforge-bench.lock ...`): the CPU is shared.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genforge import config as C  # noqa: E402
from genforge.recipes import resolve  # noqa: E402
from genforge.train.checkpoint import load_run, logged_training_time, read_metrics  # noqa: E402
from genforge.train.trainer import fit  # noqa: E402

PRESETS = ("transformer-multi30k", "gru-attention-multi30k")


def train(preset: str, out: Path, minutes: float | None) -> Path:
    rname, recipe, overrides = resolve(preset)
    if minutes is not None:
        overrides = {**overrides, "max_minutes": minutes,
                     "eval_every": max(100, int(overrides["eval_every"] * minutes / 60))}
    cfg = C.make_config(recipe, overrides)
    fit(rname, cfg, out, log=print)
    return out


def training_tokens_per_s(run: Path, cfg) -> float:
    """Source + target tokens (padding excluded) per second of pure training."""
    seconds, _ = logged_training_time(run, cfg)
    total, last = 0.0, 0
    for rec in read_metrics(run):
        if "train_tokens" in rec:  # the mean per step since the previous log line
            total += rec["train_tokens"] * (rec["step"] - last)
            last = rec["step"]
    return total / max(seconds, 1e-9)


def score(run: Path, sentences: int = 0) -> dict:
    recipe, cfg, model = load_run(run, "best")
    test = recipe.pairs(cfg, "test")
    if sentences:
        test = type(test)(test.src[:sentences], test.tgt[:sentences], origin=test.origin)
    row = {"run": run.name, "model": cfg.model}
    for beams in (1, 5):
        t0 = time.perf_counter()
        hyps = [r["text"] for r in recipe.translate(model, cfg, test.src, beams=beams, batch_size=64)]
        dt = time.perf_counter() - t0
        s = recipe.corpus_scores(hyps, test.tgt)
        row[f"bleu_b{beams}"], row[f"chrf_b{beams}"] = s["bleu"], s["chrf"]
        row[f"sent_per_s_b{beams}"] = len(hyps) / dt
        row["signature"] = s["bleu_signature"]
    row["train_tok_per_s"] = training_tokens_per_s(run, cfg)
    row["minutes"] = logged_training_time(run, cfg)[0] / 60
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--minutes", type=float, default=None, help="training budget per preset "
                    "(default: the preset's 60)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "seq2seq")
    ap.add_argument("--runs", nargs="*", type=Path, help="score these runs instead of training")
    ap.add_argument("--test-sentences", type=int, default=0, help="score only the first N test "
                    "sentences (smoke runs); 0 = all 1,000")
    args = ap.parse_args()
    runs = args.runs or [train(p, args.out / p, args.minutes) for p in args.presets]
    rows = [score(r, args.test_sentences) for r in runs]
    print("\n| run | model | BLEU greedy | BLEU beam 5 | chrF greedy | chrF beam 5 | train tokens/s "
          "| sentences/s (batch 64, beam 5) | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['model']} | {r['bleu_b1']:.1f} | {r['bleu_b5']:.1f} | {r['chrf_b1']:.1f} "
              f"| {r['chrf_b5']:.1f} | {r['train_tok_per_s']:.0f} | {r['sent_per_s_b5']:.1f} | {r['minutes']:.1f} |")
    if rows:
        print(f"\nsacrebleu BLEU signature: {rows[0]['signature']}")


if __name__ == "__main__":
    main()
