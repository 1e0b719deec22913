"""Speech and audio benchmark: recognition accuracy on FSDD's customary test split, and the
quality of generated digits judged by that recogniser (its accuracy on the requested digit;
FID in its feature space against real test clips, next to the real-vs-real floor).

    python bench/bench_audio.py                      # trains cnn-fsdd and vae-fsdd, then measures
    python bench/bench_audio.py --classifier runs/cnn-fsdd --generator runs/vae-fsdd   # measure only
    python bench/bench_audio.py --speakers           # also the 6-fold speaker-held-out mean (long)
    python bench/bench_audio.py --preset gru-fsdd --no-generation   # another recogniser alone
    python bench/bench_audio.py --speakers-only --folds george,jackson   # some folds only

Needs GENFORGE_DATA with fsdd/ (or internet for the download)."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from genforge.config import make_config
from genforge.evaluate.fid import fid_from_features
from genforge.recipes import resolve
from genforge.train.checkpoint import load_run
from genforge.train.trainer import fit


SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def say(text: str) -> None:
    print(time.strftime("%H:%M:%S"), text, flush=True)


def train(preset: str, out: Path, **extra) -> float:
    rname, recipe, ov = resolve(preset)
    t0, c0 = time.perf_counter(), time.process_time()
    fit(rname, make_config(recipe, {**ov, "plots": False, **extra}), out, log=lambda s: None)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    say(f"trained {preset} {extra or ''} in {t:.0f} s wall, {c:.0f} s CPU (the CPU is shared: "
        f"wall counts waiting)")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", help="an audio-classify run to measure (default: train cnn-fsdd)")
    ap.add_argument("--generator", help="an audio-generate run to measure (default: train vae-fsdd)")
    ap.add_argument("--n", type=int, default=300, help="generated clips (balanced over digits)")
    ap.add_argument("--speakers", action="store_true", help="also train one model per held-out speaker")
    ap.add_argument("--preset", default="cnn-fsdd", help="recogniser preset to train and measure "
                    "(also used for the --speakers folds)")
    ap.add_argument("--folds", default=",".join(SPEAKERS), help="--speakers: which held-out speakers "
                    "(comma-separated; the mean is reported only over all six)")
    ap.add_argument("--no-generation", action="store_true", help="measure the recogniser only")
    ap.add_argument("--speakers-only", action="store_true", help="only the --speakers folds (no "
                    "customary-split recogniser, no generation)")
    args = ap.parse_args()
    folds = [f for f in args.folds.split(",") if f]
    unknown = sorted(set(folds) - set(SPEAKERS))
    if unknown:
        sys.exit(f"--folds: {', '.join(unknown)} is not an FSDD speaker ({', '.join(SPEAKERS)})")
    work = Path(tempfile.mkdtemp(prefix="bench_audio."))
    rows = []
    clf = Path(args.classifier) if args.classifier else work / args.preset
    if not args.speakers_only:
        measure_recogniser(args, clf, rows)
    if args.speakers or args.speakers_only:
        measure_speakers(args.preset, folds, work, rows)
    if not (args.no_generation or args.speakers_only):
        measure_generation(args, clf, work, rows)
    report(rows, work)


def measure_recogniser(args, clf: Path, rows: list) -> None:
    t = train(args.preset, clf) if not args.classifier else float("nan")
    recipe, cfg, model = load_run(clf)
    acc = recipe.evaluate(model, cfg, "test")["accuracy"]
    what = args.preset if not args.classifier else str(clf)
    rows.append((f"recognition, customary test split (300 clips), {what}", f"{acc:.2%}",
                 f"{t:.0f} s train" if t == t else "run given", ">= 97% in <= 10 CPU-min"))
    say(f"{what}: test accuracy {acc:.2%}" + (f", {t:.0f} s train" if t == t else ""))


def measure_speakers(preset: str, folds: list, work: Path, rows: list) -> None:
    accs = []
    for sp in folds:
        d = work / f"{preset}-{sp}"
        t = train(preset, d, holdout_speaker=sp)
        r, c, m = load_run(d)
        accs.append(r.evaluate(m, c, "test")["accuracy"])
        say(f"fold {sp} held out: {accs[-1]:.2%} ({t:.0f} s train)")
    per = " ".join(f"{sp} {a:.1%}" for sp, a in zip(folds, accs))
    if len(folds) == len(SPEAKERS):
        rows.append((f"recognition, one speaker held out (6-fold mean), {preset}", f"{sum(accs) / 6:.2%}",
                     per, "reported"))
    else:  # no mean claimed from fewer folds
        rows.append((f"recognition, one speaker held out ({len(folds)} of 6 folds), {preset}", "no mean",
                     per, "reported"))


def measure_generation(args, clf: Path, work: Path, rows: list) -> None:
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


def report(rows, work: Path) -> None:
    print(f"\n| what | result | notes | target |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nruns in {work}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)


if __name__ == "__main__":
    main()
