"""Text and sequence classification benchmark: prints a table.

  rt-polarity   every encoder's preset (`<enc>-rt-polarity`), trained from random init on the
                fixed seeded 90/10 split (split_seed 0: 9,596 train / 1,066 validation), or with
                --folds K the mean over the first K folds of the seeded 10-fold CV. The accuracy
                reported is the FINAL model's after the preset's fixed number of epochs (not the
                best epoch, which would select on the reported data).
  row-by-row    `gru-fashion-rows` / `lstm-fashion-rows`: best-on-validation checkpoint,
                accuracy on the 10,000-image Fashion-MNIST test split; `gru-mnist-rows` on the
                2,000 MNIST test images held out when only the test split exists.

Run under the shared lock:
  nohup flock /tmp/genforge-bench.lock python bench/bench_text.py > /tmp/bench_text.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genforge.config import make_config  # noqa: E402
from genforge.recipes import resolve  # noqa: E402
from genforge.train import checkpoint as ckpt  # noqa: E402
from genforge.train.trainer import fit  # noqa: E402

TEXT = ["bag-rt-polarity", "cnn-rt-polarity", "lstm-rt-polarity", "attention-rt-polarity",
        "transformer-rt-polarity"]
ROWS = ["gru-fashion-rows", "gru-mnist-rows"]  # lstm-fashion-rows too with --only
TARGETS = {"rt-polarity": 0.77, "fashion-mnist": 0.88}
PEERS = {"cnn-rt-polarity": "Kim 2014 CNN-rand 76.1% (10-fold)"}


def train_one(preset: str, extra: dict, out: Path, log) -> tuple[Path, float]:
    rname, recipe, overrides = resolve(preset)
    cfg = make_config(recipe, {**overrides, "plots": False, "log_every": 100, **extra})
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    fit(rname, cfg, out, log=log)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="presets to run (default: all)")
    ap.add_argument("--folds", type=int, default=0, help="rt-polarity: mean over this many CV folds (0 = fixed 90/10 split)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 avoids OpenMP oversubscription when the 2 cores are shared)")
    ap.add_argument("--quick", action="store_true", help="a few steps each (smoke test)")
    ap.add_argument("--out", default="bench/out/text")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GENFORGE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    # most informative first, so a run cut short still has the headline numbers
    presets = args.only or ["gru-fashion-rows", "cnn-rt-polarity", "bag-rt-polarity",
                            "transformer-rt-polarity", "attention-rt-polarity",
                            "lstm-rt-polarity", "gru-mnist-rows"]
    quick = {"max_steps": 3, "eval_batches": 2} if args.quick else {}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    logf = open(Path(args.out) / "train.log", "a")  # the trainer's per-step lines

    def log(s):
        print(s, file=logf, flush=True)

    rows = []
    for preset in presets:
        is_text = preset in TEXT
        folds = list(range(args.folds)) if (is_text and args.folds) else [-1]
        accs, f1s, secs = [], [], []
        for k in folds:
            extra = {**quick, **({"fold": k} if k >= 0 else {})}
            run, dt = train_one(preset, extra, Path(args.out) / f"{preset}{'' if k < 0 else f'-fold{k}'}", log)
            recipe, cfg, model = ckpt.load_run(run, "last" if is_text else "best")
            with torch.no_grad():
                ev = recipe.evaluate(model, cfg, "val" if is_text else "test")
            accs.append(ev["accuracy"])
            f1s.append(ev["f1"])
            secs.append(dt)
        data = cfg.data
        split = ((f"mean of {len(folds)} folds" if args.folds else "fixed 90/10 val")
                 if is_text else ("test 10k" if data == "fashion-mnist" else "held-out 2k of test"))
        target = TARGETS.get(data)
        row = {"preset": preset, "data": data, "split": split, "accuracy": statistics.mean(accs),
               "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0, "macro_f1": statistics.mean(f1s),
               "train_s": statistics.mean(secs), "epochs": cfg.epochs, "target": target,
               "peer": PEERS.get(preset, "")}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print(f"genforge bench_text — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, {args.threads} thread(s), fp32"
          + ("; QUICK smoke run (numbers meaningless)" if args.quick else ""))
    print()
    print("| preset | data | evaluated on | epochs | accuracy | macro F1 | train time/run | target | met | peer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = f"{100 * r['accuracy']:.2f}%" + (f" ± {100 * r['std']:.2f}" if r["std"] else "")
        tgt = f">= {100 * r['target']:.0f}%" if r["target"] else "-"
        met = "-" if not r["target"] else ("yes" if r["accuracy"] >= r["target"] else "no")
        print(f"| {r['preset']} | {r['data']} | {r['split']} | {r['epochs']:g} | {acc} | "
              f"{100 * r['macro_f1']:.2f}% | {r['train_s']:.0f} s | {tgt} | {met} | {r['peer'] or '-'} |")
    text = [r for r in rows if r["data"] == "rt-polarity"]
    if text:
        best = max(text, key=lambda r: r["accuracy"])
        print(f"\nbest rt-polarity encoder: {best['preset']} {100 * best['accuracy']:.2f}% "
              f"(target >= 77%: {'met' if best['accuracy'] >= 0.77 else 'missed'})")


if __name__ == "__main__":
    main()
