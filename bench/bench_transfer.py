"""Pretrained encoders and transfer learning (issue 18): prints one markdown table per part.

  a  minilm-rt-polarity fine-tuned: the seeded split's test accuracy, then CV folds (--folds N)
  b  linear probe on frozen MiniLM (minilm-probe-rt-polarity)
  c  MiniLM sentence embedding throughput, batch 64: genforge vs sentence-transformers,
     alternating rounds, every round printed
  d  transfer curve: a CNN pre-trained on Fashion-MNIST, fine-tuned on MNIST (the offline
     test-only copy's carved splits) with the first 100 / 1000 training images (about 10 /
     100 per class) vs the same CNN from scratch, same steps, several seeds
  e  text-classify cnn on rt-polarity: word2vec-initialised embeddings (non-static) vs random

    GENFORGE_DATA=/work/shared/data OMP_NUM_THREADS=2 python bench/bench_transfer.py --parts c,d,e,b
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from genforge.config import make_config, parse_sets
from genforge.recipes import get_recipe, resolve
from genforge.train.trainer import fit_model

QUIET = dict(log=lambda s: None)


def _train(name: str, overrides: dict, out: Path):
    rname, recipe, preset = resolve(name)
    cfg = make_config(recipe, {**preset, "plots": False, **overrides})
    t0, c0 = time.perf_counter(), time.process_time()
    _, model = fit_model(rname, cfg, out, **QUIET)
    # wall minutes, and CPU minutes (all of this process's threads)
    return recipe, cfg, model, (time.perf_counter() - t0) / 60, (time.process_time() - c0) / 60


def _test_acc(recipe, cfg, model, split="test") -> float:
    cfg.eval_batches = 0
    return float(recipe.evaluate(model.eval(), cfg, split)["accuracy"])


def _kept(name: str, overrides: dict, out: Path):
    """_train into `out` and record its minutes there; a run already recorded there (by an
    earlier call, or by `genforge train NAME --set ... --out OUT` plus a `bench_minutes.json`
    holding its wall and CPU minutes) is scored as it is: its last weights, as _train's."""
    import json

    from genforge.train.checkpoint import load_run, read_config

    record = out / "bench_minutes.json"
    if not record.is_file():
        *trained, mins, cpu = _train(name, overrides, out)
        record.write_text(json.dumps({"wall": mins, "cpu": cpu}))
        return (*trained, mins, cpu)
    _, recipe, preset = resolve(name)
    want = make_config(recipe, {**preset, "plots": False, **overrides})
    _, _, have = read_config(out)
    if (diff := [k for k in dict.fromkeys(("fold", "seed", *preset, *overrides)) if k != "plots"
                 and str(getattr(have, k, None)) != str(getattr(want, k, None))]):
        raise SystemExit(f"{out} was trained with other settings ({', '.join(diff)}); move it away")
    recipe, cfg, model = load_run(out, "last")
    minutes = json.loads(record.read_text())
    return recipe, cfg, model, minutes["wall"], minutes["cpu"]


def part_a(tmp: Path, folds: list[int], seeded: bool = True, overrides: dict | None = None) -> None:
    over = overrides or {}
    print(f"\n### (a) minilm-rt-polarity, full fine-tuning{' ' + str(over) if over else ''}; "
          f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| split | test/fold accuracy | validation accuracy (chooses settings) | wall minutes "
          "| CPU minutes |\n|---|---|---|---|---|")
    if seeded:
        r, cfg, m, mins, cpu = _kept("minilm-rt-polarity", over, tmp / "a")
        print(f"| seeded 80/10/10 (test) | {100 * _test_acc(r, cfg, m):.2f}% | "
              f"{100 * _test_acc(r, cfg, m, 'val'):.2f}% | {mins:.1f} | {cpu:.1f} |", flush=True)
    accs = []
    for fold in folds:
        r, cfg, m, mins, cpu = _kept("minilm-rt-polarity", {**over, "fold": fold}, tmp / f"a{fold}")
        accs.append(_test_acc(r, cfg, m, "val"))
        print(f"| fold {fold} of 10 | {100 * accs[-1]:.2f}% | (the fold) | {mins:.1f} | {cpu:.1f} |",
              flush=True)
    if accs:
        what = ("10-fold mean" if sorted(folds) == list(range(10)) else
                f"{len(accs)} of 10 folds ran; their mean (not a 10-fold mean)")
        print(f"\n{what} {100 * statistics.mean(accs):.2f}% (target >= 85%); "
              f"load average {os.getloadavg()[0]:.2f} at end")


def part_b(tmp: Path, epochs: float) -> None:
    print("\n### (b) linear probe on frozen MiniLM (minilm-probe-rt-polarity)\n")
    r, cfg, m, mins, _ = _train("minilm-probe-rt-polarity", {"epochs": epochs}, tmp / "b")
    print(f"| epochs | test accuracy | minutes |\n|---|---|---|\n| {epochs:g} | "
          f"{100 * _test_acc(r, cfg, m):.1f}% | {mins:.1f} |", flush=True)


def part_c(n: int, rounds: int) -> None:
    from sentence_transformers import SentenceTransformer

    from genforge.pretrained.sources import packaged_path
    from genforge.pretrained.run import import_run
    from genforge.data.tabular_text import load_labelled_text
    from genforge.train.checkpoint import load_run

    texts = list(load_labelled_text("rt-polarity", "text", "label").texts[:n])
    with tempfile.TemporaryDirectory() as d:
        run = import_run("minilm", Path(d) / "minilm", log=lambda s: None)
        recipe, cfg, model = load_run(run)
        _, _, qmodel = load_run(run, quantize="int8")  # --quantize int8 (fbgemm + SmoothQuant on x86)
    model.eval()
    st = SentenceTransformer(str(packaged_path("minilm")), device="cpu")
    programs = {"genforge": lambda: recipe.embed(model, cfg, texts, batch_size=64)["vectors"],
                "genforge int8": lambda: recipe.embed(qmodel, cfg, texts, batch_size=64)["vectors"],
                "st": lambda: torch.from_numpy(st.encode(texts, batch_size=64, convert_to_numpy=True))}
    vecs = {name: fn() for name, fn in programs.items()}  # warm-up, and the vectors compared
    cos = torch.nn.functional.cosine_similarity
    fidelity = {name: cos(vecs[name], vecs["st"]) for name in ("genforge", "genforge int8")}
    q = next(m for m in qmodel.modules() if hasattr(m, "kernel"))
    print(f"\n### (c) MiniLM embedding throughput, {n} rt-polarity sentences, batch 64, "
          f"{torch.get_num_threads()} threads; int8 kernel: {q.kernel}, token range {q.token_range}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}\n")
    print("| round | genforge fp32 sent/s | genforge int8 sent/s | sentence-transformers sent/s "
          "| fp32 ratio | int8 ratio |\n|---|---|---|---|---|---|")
    ratios = {"genforge": [], "genforge int8": []}
    names = list(programs)
    for i in range(rounds):
        rates = {}
        for name in (names if i % 2 == 0 else names[::-1]):  # alternate the order
            t0 = time.perf_counter()
            programs[name]()
            rates[name] = n / (time.perf_counter() - t0)
        for name in ratios:
            ratios[name].append(rates[name] / rates["st"])
        print(f"| {i + 1} | {rates['genforge']:.0f} | {rates['genforge int8']:.0f} | {rates['st']:.0f} "
              f"| {ratios['genforge'][-1]:.2f}x | {ratios['genforge int8'][-1]:.2f}x |", flush=True)
    print(f"\nmedian ratio: fp32 {statistics.median(ratios['genforge']):.2f}x, "
          f"int8 {statistics.median(ratios['genforge int8']):.2f}x (target >= 1.5x); "
          f"load average {os.getloadavg()[0]:.2f} at end")
    for name, c in fidelity.items():
        print(f"cosine similarity of {name}'s vectors to sentence-transformers': mean {c.mean():.5f}, "
              f"min {c.min():.5f}")


def _mean_line(what: str, rows: list[list[float]], a: str, b: str) -> str:
    """'what: a mean X% (sd), b mean Y% (sd); b higher in k of n seeds' over rows of [a, b]."""
    def ms(v):
        return f"{100 * statistics.mean(v):.2f}%" + (f" (sd {100 * statistics.stdev(v):.2f})" if len(v) > 1 else "")
    xa, xb = [r[0] for r in rows], [r[1] for r in rows]
    wins = sum(y > x for x, y in rows)
    return f"{what}: {a} mean {ms(xa)}, {b} mean {ms(xb)}; {b} higher in {wins} of {len(rows)} seeds"


def part_d(tmp: Path, seeds: int, pre_steps: int, steps: int) -> None:
    base = {"model": "cnn", "batch_size": 32, "lr": 2e-3, "model.channels": (16, 32),
            "model.dense": 64, "eval_batches": 0, "schedule": "constant"}
    _, _, _, mins, _ = _train("image-classify", {**base, "data": "fashion-mnist", "max_steps": pre_steps},
                           tmp / "fmnist")
    pre = str(tmp / "fmnist")
    # from scratch, then three starts from the Fashion-MNIST run: every tensor copied (the
    # 10-way output layer too: same shape, but its classes are garments), the output layer
    # re-initialised (init_skip=head.5, the usual "new top"), and that with the convolution
    # stages frozen as well (their BatchNorm statistics still follow MNIST)
    variants = {"from scratch": {}, "every layer copied": {"init_from": pre},
                "new output layer": {"init_from": pre, "init_skip": "head.5"},
                "new output layer, convolutions frozen": {"init_from": pre, "init_skip": "head.5",
                                                          "freeze": "features"}}
    print(f"\n### (d) transfer curve: Fashion-MNIST CNN ({pre_steps} steps, {mins:.1f} min) -> MNIST, "
          f"{steps} steps each, test accuracy\n")
    print("| MNIST training images | seed | " + " | ".join(variants) + " |\n|---|---|"
          + "---|" * len(variants))
    summary = []
    for n in (100, 1000):
        rows = []
        for seed in range(seeds):
            accs = []
            for i, over in enumerate(variants.values()):
                r, cfg, m, *_ = _train("image-classify", {**base, "data": "mnist", "train_limit": n,
                                                         "max_steps": steps, "seed": seed, **over},
                                       tmp / f"d{n}-{seed}-{i}")
                accs.append(_test_acc(r, cfg, m))
            rows.append(accs)
            print(f"| {n} (~{n // 10}/class) | {seed} | "
                  + " | ".join(f"{100 * x:.1f}%" for x in accs) + " |", flush=True)
        names = list(variants)
        summary += [_mean_line(f"{n} images", [[r[0], r[i]] for r in rows], names[0], names[i])
                    for i in range(1, len(names))]
    print("\n" + "\n".join(summary))


def part_e(tmp: Path, seeds: int, epochs: float) -> None:
    rw, wcfg, _, wmins, _ = _train("word-embeddings", {"epochs": 2}, tmp / "w2v")
    print(f"\n### (e) rt-polarity CNN, word2vec-initialised (non-static) vs random embeddings, "
          f"{epochs:g} epochs (word2vec: {wmins:.1f} min)\n")
    print("| seed | random init | word2vec init |\n|---|---|---|")
    common = {"model.emb_dim": wcfg.model_cfg.dim, "epochs": epochs}
    rows = []
    for seed in range(seeds):
        accs = []
        for init in ("", str(tmp / "w2v")):
            r, cfg, m, *_ = _train("cnn-rt-polarity", {**common, "seed": seed, "init_embeddings": init},
                                  tmp / f"e{seed}-{bool(init)}")
            accs.append(_test_acc(r, cfg, m))
        rows.append(accs)
        print(f"| {seed} | {100 * accs[0]:.1f}% | {100 * accs[1]:.1f}% |", flush=True)
    print("\n" + _mean_line("rt-polarity test", rows, "random init", "word2vec init"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="c,d,e,b")
    ap.add_argument("--folds", type=int, default=0, help="(a): CV folds to run after the seeded split "
                    "(10 = folds 0-9)")
    ap.add_argument("--fold-ids", default="", help="(a): these folds instead (0,2,4: split the ten "
                    "over processes)")
    ap.add_argument("--no-seeded", action="store_true", help="(a): only the CV folds")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="(a): preset settings to change, printed in the heading")
    ap.add_argument("--runs", type=Path, default=None, help="(a): keep the fine-tuned runs in this "
                    "folder (a{fold}, a for the seeded split) and score those already there "
                    "instead of training them again (default: a temporary folder)")
    ap.add_argument("--probe-epochs", type=float, default=3)
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pre-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--text-epochs", type=float, default=3)
    args = ap.parse_args()
    try:
        folds = [int(f) for f in args.fold_ids.split(",")] if args.fold_ids else list(range(args.folds))
    except ValueError:
        ap.error(f"--fold-ids expects fold numbers 0-9 separated by commas (0,2,4), got {args.fold_ids!r}")
    try:
        sets = parse_sets(args.set)  # strings: the config parses each as its key's type
    except ValueError as e:
        ap.error(str(e))
    if args.runs:
        args.runs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for part in args.parts.split(","):
            {"a": lambda: part_a(args.runs or tmp, folds, not args.no_seeded, sets),
             "b": lambda: part_b(tmp, args.probe_epochs),
             "c": lambda: part_c(args.sentences, args.rounds),
             "d": lambda: part_d(tmp, args.seeds, args.pre_steps, args.steps),
             "e": lambda: part_e(tmp, args.seeds, args.text_epochs)}[part.strip()]()


if __name__ == "__main__":
    main()
