"""Benchmark: the multimodal recipes on captioned Fashion-MNIST (issue 21), fp32 on this CPU.

Tables:
  1. CLIP: MiniLM text tower (locked, clip-fashion) vs byte-level Transformer from scratch
     (clip-scratch-fashion) at the same training budget: zero-shot accuracy on the FMNIST test
     split with training prompts / held-out prompts (targets >= 85% / >= 80%), text -> image
     and image -> text recall@1/5/10 with held-out captions.
  2. Text-to-image (text2image-fashion on the MiniLM CLIP run) vs the label-conditioned
     diffusion (diffusion-fashion) at the same budget: class-consistency of images generated
     from held-out prompts (text2image) / from labels (diffusion) in a genforge classifier's
     features (target >= 80%), and FID in those features (NOT Inception FID).
  3. Captioning (caption-fashion): BLEU / chrF of greedy captions against held-out-wording
     references, and BLEU against training-wording references.

Each run trains for `--minutes` (the trainer's max_minutes: the budget ends the run and drives
the LR schedule). The feature classifier is `--classifier RUN` (an image-classify run on
Fashion-MNIST, e.g. `genforge train cnn-fashion --out runs/cnn-fashion`); without it one is
trained first with the cnn-fashion preset under the same budget.

The full benchmark (about 20 CPU-minutes per run, 6 runs; run it under the shared lock):

  GENFORGE_DATA=/work/shared/data nohup flock /tmp/genforge-bench.lock \\
      python bench/bench_multimodal.py --minutes 20 --out bench/out/multimodal > /tmp/bench_multimodal.log 2>&1 &

`--parts clip --clip-presets clip-fashion` trains and scores one CLIP run alone (20 minutes);
`--parts t2i` reuses the clip-fashion run already in --out.

`--smoke` checks the pipeline end to end in a few minutes (tiny step counts and slices; its
figures say nothing about quality).
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
from genforge.train.checkpoint import load_run  # noqa: E402
from genforge.train.trainer import fit  # noqa: E402

SMOKE = {  # preset -> overrides making a run of a minute or two
    "cnn-fashion": {"epochs": 1, "train_limit": 3000, "model.channels": (8, 16), "model.dense": 32},
    "clip-fashion": {"max_steps": 40, "batch_size": 64, "eval_every": 40, "eval_batches": 2},
    "clip-scratch-fashion": {"max_steps": 40, "batch_size": 64, "eval_every": 40, "eval_batches": 2},
    "text2image-fashion": {"max_steps": 40, "batch_size": 32, "eval_every": 40, "eval_batches": 2,
                           "ema": 0.0, "model.base_channels": 16, "sample_steps": 10},
    "diffusion-fashion": {"max_steps": 40, "batch_size": 32, "eval_every": 40, "eval_batches": 2,
                          "ema": 0.0, "model.base_channels": 16, "sample_steps": 10},
    "caption-fashion": {"max_steps": 60, "batch_size": 64, "eval_every": 60, "eval_batches": 2},
}


def train(preset: str, out: Path, minutes: float, smoke: bool, extra: dict | None = None) -> Path:
    run = out / preset
    if (run / "config.json").is_file() and (run / "model.safetensors").exists():
        print(f"[{preset}] reusing {run}")
        return run
    rname, recipe, overrides = resolve(preset)
    overrides = {**overrides, "max_minutes": minutes, **(extra or {})}
    if smoke:
        overrides.update(SMOKE[preset])
        overrides.pop("max_minutes", None)
    cfg = C.make_config(recipe, overrides)
    t0 = time.perf_counter()
    print(f"[{preset}] training -> {run}", flush=True)
    fit(rname, cfg, run, log=lambda s: None, overwrite=True)
    print(f"[{preset}] trained in {time.perf_counter() - t0:.0f}s", flush=True)
    return run


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "multimodal")
    ap.add_argument("--classifier", default="", help="image-classify run for FID/class-consistency")
    ap.add_argument("--samples", type=int, default=1000, help="generated images scored per model")
    ap.add_argument("--eval-images", type=int, default=0, help="test images scored (0 = all 10,000)")
    ap.add_argument("--smoke", action="store_true", help="a few-minute end-to-end check (no quality)")
    ap.add_argument("--parts", default="clip,t2i,caption",
                    help="tables to produce, comma-separated: clip, t2i, caption")
    ap.add_argument("--clip-presets", default="clip-fashion,clip-scratch-fashion",
                    help="clip: the text towers to train (one run each)")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if parts - {"clip", "t2i", "caption"}:
        ap.error(f"unknown --parts {sorted(parts - {'clip', 't2i', 'caption'})}; choose clip, t2i, caption")
    if "t2i" in parts and "clip" in parts and "clip-fashion" not in a.clip_presets.split(","):
        ap.error("t2i trains on the clip-fashion run: keep it in --clip-presets")
    if a.smoke:
        a.samples, a.eval_images = min(a.samples, 100), a.eval_images or 500
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # 1. CLIP: MiniLM vs scratch text tower, same budget
    towers = {"clip-fashion": "MiniLM (locked)", "clip-scratch-fashion": "scratch Transformer"}
    rows = []
    for preset in a.clip_presets.split(",") if "clip" in parts else []:
        if preset not in towers:
            ap.error(f"unknown --clip-presets entry {preset!r}; choose from {', '.join(towers)}")
        tower = towers[preset]
        run = train(preset, a.out, a.minutes, a.smoke)
        recipe, cfg, model = load_run(run)
        cfg.eval_batches, cfg.eval_images = 0, a.eval_images
        r = recipe.evaluate(model, cfg, "test")
        rows.append([tower, r["zeroshot_train"], r["zeroshot_heldout"], r["t2i_recall@1"],
                     r["t2i_recall@5"], r["t2i_recall@10"], r["i2t_recall@10"]])
    if rows:
        table(f"CLIP on captioned Fashion-MNIST, test split ({a.eval_images or 10000} images), "
              f"{'SMOKE ' if a.smoke else ''}budget {a.minutes:g} min each",
              ["text tower", "zero-shot (train prompts)", "zero-shot (held-out prompts)",
               "t2i R@1", "t2i R@5", "t2i R@10 (held-out)", "i2t R@10"], rows)
    if "t2i" in parts:
        text_to_image(a)
    if "caption" in parts:
        captioning(a)
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")


def text_to_image(a) -> None:
    """Table 2: text2image (on the clip-fashion run in --out) vs label-conditioned diffusion."""
    clf = a.classifier or str(train("cnn-fashion", a.out, a.minutes, a.smoke))
    from genforge.recipes import image_generate, text2image

    t2i = train("text2image-fashion", a.out, a.minutes, a.smoke, {"clip": str(a.out / "clip-fashion")})
    dif = train("diffusion-fashion", a.out, a.minutes, a.smoke)
    _, cfg, model = load_run(t2i)
    rt = text2image.quality_metrics(model, cfg, "test", a.samples, classifier=clf)
    _, cfg, model = load_run(dif)
    rd = image_generate.quality_metrics(model, cfg, "test", a.samples, classifier=clf)
    table(f"Text-to-image vs label-conditioned diffusion ({a.samples} samples, FID in {clf}'s features)",
          ["model", "conditioned on", "class-consistency", "FID (genforge features)"],
          [["text2image-fashion", "held-out prompts", rt["class_consistency_heldout"], rt["fid"]],
           ["diffusion-fashion", "class labels", rd["class_consistency"], rd["fid"]]])


def captioning(a) -> None:
    """Table 3: caption-fashion's greedy captions against held-out-wording references."""
    cap = train("caption-fashion", a.out, a.minutes, a.smoke)
    recipe, cfg, model = load_run(cap)
    cfg.eval_batches, cfg.eval_images = 0, a.eval_images or 2000
    r = recipe.evaluate(model, cfg, "test")
    table(f"Captioning, test split ({cfg.eval_images} images, 3 references each)",
          ["model", "BLEU (held-out wording)", "chrF (held-out wording)", "BLEU (training wording)"],
          [["caption-fashion", r["bleu"], r["chrf"], r["bleu_train_wording"]]])


if __name__ == "__main__":
    main()
