"""Captioning: cached greedy decoding equals decoding without a cache, a tiny run reports
BLEU/chrF against held-out wording (checked against sacrebleu on the same strings), and
`genforge generate RUN --image` prints a caption."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from genforge.config import make_config
from genforge.models.captioner import Captioner, CaptionerConfig
from genforge.recipes import get_recipe

TINY = {"max_steps": 60, "lr": 5e-3, "batch_size": 16, "train_limit": 200, "eval_batches": 1, "eval_images": 16,
        "plots": False, "model.channels": (4, 8), "model.d_model": 16, "model.n_layer": 2,
        "model.n_head": 2}


def test_cached_decoding_equals_full_decoding():
    torch.manual_seed(0)
    m = Captioner(CaptionerConfig(channels=(4, 8), vocab_size=30, d_model=16, n_layer=2, n_head=2,
                                  max_len=12)).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(m.generate(x, use_cache=True), m.generate(x, use_cache=False))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from genforge.train.trainer import fit

    out = tmp_path_factory.mktemp("cap") / "run"
    fit("captioning", make_config(get_recipe("captioning"), dict(TINY)), out, log=lambda s: None)
    return out


def test_bleu_and_chrf_against_held_out_references(run):
    import sacrebleu

    from genforge.recipes import contrastive as cl
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(run)
    res = recipe.evaluate(model, cfg, "test")
    assert {"loss", "bleu", "chrf", "bleu_train_wording"} <= res.keys()
    sp, _ = cl.load_splits(cfg)
    k = min(cfg.eval_images, cfg.eval_batches * cfg.batch_size)
    hyps = recipe.caption_images(model, cfg, sp["test"].images[:k])
    refs = [cl.split_captions(cfg, "test", k, held_out=True, seed=s)[0] for s in (1, 2, 3)]
    assert res["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
    assert res["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score)


def load_vocab(run):
    import json

    return set(json.loads((run / "config.json").read_text())["vocab"])


def test_generate_image_prints_a_caption(run, tmp_path):
    from PIL import Image

    from genforge.data.images import load_image_splits

    x, _ = load_image_splits("fashion-mnist", train_limit=50).splits["test"]
    Image.fromarray(x[0, 0].numpy()).save(tmp_path / "x.png")
    env = dict(os.environ)
    p = subprocess.run([sys.executable, "-m", "genforge", "generate", str(run), "--image", "x.png"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()
    assert words and "<" not in p.stdout  # words, no special tokens
    assert all(w.strip(",") in load_vocab(run) for w in words)  # the training captions' words
    p = subprocess.run([sys.executable, "-m", "genforge", "generate", str(run)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode != 0 and "--image x.png" in p.stderr and "Traceback" not in p.stderr
