"""Speech and audio benchmark: recognition accuracy on FSDD's customary test split, and the
quality of generated digits judged by that recogniser (its accuracy on the requested digit;
FID in its feature space against real test clips, next to the real-vs-real floor).

    python bench/bench_audio.py                      # trains cnn-fsdd and vae-fsdd, then measures
    python bench/bench_audio.py --classifier runs/cnn-fsdd --generator runs/vae-fsdd   # measure only
    python bench/bench_audio.py --speakers           # also the 6-fold speaker-held-out mean (long)

Needs GENFORGE_DATA with fsdd/ (or internet for the download)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from genforge.config import make_config
from genforge.evaluate.fid import fid_from_features
from genforge.recipes import resolve
from genforge.train.checkpoint import load_run
from genforge.train.trainer import fit


def train(preset: str, out: Path, **extra) -> float:
    rname, recipe, ov = resolve(preset)
    t0 = time.perf_counter()
    fit(rname, make_config(recipe, {**ov, "plots": False, **extra}), out, log=lambda s: None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", help="an audio-classify run to measure (default: train cnn-fsdd)")
    ap.add_argument("--generator", help="an audio-generate run to measure (default: train vae-fsdd)")
    ap.add_argument("--n", type=int, default=300, help="generated clips (balanced over digits)")
    ap.add_argument("--speakers", action="store_true", help="also train one model per held-out speaker")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_audio."))
    rows = []

    clf = Path(args.classifier) if args.classifier else work / "cnn-fsdd"
    t = train("cnn-fsdd", clf) if not args.classifier else float("nan")
    recipe, cfg, model = load_run(clf)
    acc = recipe.evaluate(model, cfg, "test")["accuracy"]
    rows.append(("recognition, customary test split (300 clips)", f"{acc:.2%}", f"{t:.0f} s train" if t == t else "run given",
                 ">= 97% in <= 10 CPU-min"))

    if args.speakers:
        accs = []
        for sp in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler"):
            d = work / f"cnn-{sp}"
            train("cnn-fsdd", d, holdout_speaker=sp)
            r, c, m = load_run(d)
            accs.append(r.evaluate(m, c, "test")["accuracy"])
        rows.append(("recognition, one speaker held out (6-fold mean)", f"{sum(accs) / 6:.2%}",
                     " ".join(f"{a:.0%}" for a in accs), "reported"))

    gen = Path(args.generator) if args.generator else work / "vae-fsdd"
    t = train("vae-fsdd", gen) if not args.generator else float("nan")
    grecipe, gcfg, gmodel = load_run(gen)
    t0 = time.perf_counter()
    q = grecipe.quality_metrics(gmodel, gcfg, str(clf), n=args.n, seed=0)
    tg = time.perf_counter() - t0
    rows.append(("generation: recogniser accuracy on the requested digit", f"{q['recognised']:.2%}",
                 (f"{t:.0f} s train, " if t == t else "") + f"{tg:.0f} s for {args.n} clips", ">= 80%"))
    # the floor: real train clips against real test clips, same count, same features
    real_test = grecipe.real_test_waves(gcfg, "test")[:args.n]
    real_train = grecipe.real_test_waves(gcfg, "train")[:args.n]
    f_test, _ = grecipe.recogniser_features(str(clf), real_test, gcfg.sample_rate)
    f_train, _ = grecipe.recogniser_features(str(clf), real_train, gcfg.sample_rate)
    floor = fid_from_features(f_test, f_train)
    rows.append(("generation: FID (recogniser features) vs real test clips", f"{q['fid']:.1f}",
                 f"real-vs-real floor {floor:.1f}", "reported"))

    print(f"\n| what | result | notes | target |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nruns in {work}; torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
