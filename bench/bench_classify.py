"""Image-classification benchmark: train presets on real data, report wall time,
images/s, test accuracy and peak RSS.

    GENFORGE_DATA=../shared/data python bench/bench_classify.py [PRESET ...]

Each preset trains in its own process (clean peak-RSS figure), through the same trainer
and recipe as `genforge train PRESET`."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"cnn-fashion": 0.925, "mlp-fashion": 0.88, "mlp-digits": 0.97, "cnn-digits": 0.97}
DEFAULT = ["mlp-digits", "cnn-digits", "mlp-fashion", "cnn-fashion"]


def one(preset: str) -> dict:
    import torch

    from genforge.config import make_config
    from genforge.recipes import resolve
    from genforge.train.checkpoint import load_run, read_metrics
    from genforge.train.trainer import fit

    rname, recipe, overrides = resolve(preset)
    cfg = make_config(recipe, overrides)
    cfg.log_every = 10**9
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = fit(rname, cfg, Path(tmp) / "run", log=lambda s: None)
        wall = time.perf_counter() - t0
        steps = max(r["step"] for r in read_metrics(run))
        rec, cfg2, model = load_run(run, "best")
        cfg2.eval_batches = 0
        test = rec.evaluate(model, cfg2, "test")
    return {"preset": preset, "data": cfg.data, "model": cfg.model, "steps": steps, "wall_s": wall,
            "images_per_s": steps * cfg.batch_size / wall, "test_accuracy": test["accuracy"],
            "test_f1": test["f1"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2])))
        return
    presets = sys.argv[1:] or DEFAULT
    rows = []
    for p in presets:
        out = subprocess.run([sys.executable, __file__, "--one", p], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{p} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"... {p}: {r['test_accuracy']:.4f} in {r['wall_s']:.0f}s", file=sys.stderr, flush=True)
    cpu = platform.processor() or platform.machine()
    print(f"# image classification, {os.cpu_count()} CPU cores ({cpu}), torch {rows[0]['torch']}, "
          f"{rows[0]['threads']} threads, fp32, {time.strftime('%Y-%m-%d')}")
    print(f"{'preset':<13} {'data':<14} {'model':<6} {'steps':>6} {'train wall':>10} {'images/s':>9} "
          f"{'test acc':>8} {'test F1':>8} {'target':>7} {'peak RSS':>9}")
    for r in rows:
        tgt = TARGETS.get(r["preset"])
        mark = "" if tgt is None else f"{tgt:.3f}{'+' if r['test_accuracy'] >= tgt else '-'}"
        print(f"{r['preset']:<13} {r['data']:<14} {r['model']:<6} {r['steps']:>6} {r['wall_s']:>9.0f}s "
              f"{r['images_per_s']:>9.0f} {r['test_accuracy']:>8.4f} {r['test_f1']:>8.4f} {mark:>7} "
              f"{r['peak_rss_mb']:>7.0f}MB")
    print("(target column: + met, - missed; train wall includes per-epoch validation)")


if __name__ == "__main__":
    main()
