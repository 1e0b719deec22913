"""CLIP-style contrastive model and recipe: InfoNCE against its written-out formula, the
loss's symmetry, recall@k against a brute-force oracle, the caption generator's train /
held-out split, the user's caption files, zero-shot prediction and its errors."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from genforge.config import ConfigError, make_config
from genforge.data.captions import (HELD_OUT_NOUNS, HELD_OUT_TEMPLATES, TRAIN_NOUNS, TRAIN_TEMPLATES,
                                    Captioner, load_caption_pairs, looks_english, measure)
from genforge.data.registry import DataError
from genforge.models.clip import CLIP, CLIPConfig, clip_loss, recall_at_k
from genforge.recipes import get_recipe

TINY = {"max_steps": 4, "batch_size": 16, "train_limit": 200, "eval_batches": 2, "eval_images": 32,
        "model.image_channels": (4, 8), "model.embed_dim": 16, "model.text_width": 16,
        "model.text_layers": 1, "model.text_heads": 2, "plots": False}


def test_infonce_matches_the_written_out_formula():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    t = 1 / 0.07
    # -1/2N sum_i [log softmax_j(t <I_i, T_j>)_i + log softmax_j(t <I_j, T_i>)_i]
    total = 0.0
    for i in range(5):
        row = [t * float(img[i] @ txt[j]) for j in range(5)]
        col = [t * float(img[j] @ txt[i]) for j in range(5)]
        total -= row[i] - math.log(sum(math.exp(v) for v in row))
        total -= col[i] - math.log(sum(math.exp(v) for v in col))
    assert float(clip_loss(img, txt, scale)) == pytest.approx(total / 10, rel=1e-5)


def test_loss_is_symmetric_in_images_and_texts():
    torch.manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(7, 4), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(7, 4), dim=-1)
    s = torch.tensor(2.0)
    assert torch.allclose(clip_loss(a, b, s), clip_loss(b, a, s))
    # and not the one-sided loss: the two directions differ for these embeddings
    logits = s.exp() * a @ b.T
    one_way = torch.nn.functional.cross_entropy(logits, torch.arange(7))
    assert not torch.allclose(one_way, clip_loss(a, b, s))


def test_recall_at_k_matches_a_brute_force_oracle():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        q, n = 13, 29
        sim = torch.randn(q, n, generator=g)
        targets = torch.rand(q, n, generator=g) < 0.08
        got = recall_at_k(sim, targets, ks=(1, 5, 10))
        for k in (1, 5, 10):
            hits = 0
            for i in range(q):
                ranked = sorted(range(n), key=lambda j: -float(sim[i, j]))[:k]
                hits += any(bool(targets[i, j]) for j in ranked)
            assert got[k] == pytest.approx(hits / q), (trial, k)


def test_temperature_is_clamped_as_in_clip():
    m = CLIP(CLIPConfig(image_channels=(4,), embed_dim=8, text_width=8, text_layers=1, text_heads=2))
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert float(m.scale().exp().detach()) == pytest.approx(100.0)


def test_frozen_text_tower_memo_gives_the_same_vectors():
    torch.manual_seed(0)
    m = CLIP(CLIPConfig(image_channels=(4,), embed_dim=8, text_width=8, text_layers=1, text_heads=2)).eval()
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [5, 6, 7, 0]])
    live = m.encode_text(tokens)
    m.text.requires_grad_(False)
    memo1, memo2 = m.encode_text(tokens), m.encode_text(tokens)
    assert len(m._text_memo) == 2  # two distinct captions
    assert torch.allclose(live, memo1, atol=1e-6) and torch.equal(memo1, memo2)


def test_training_and_held_out_wording_are_disjoint(data_root):
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    for c in TRAIN_NOUNS:
        assert not set(TRAIN_NOUNS[c]) & set(HELD_OUT_NOUNS[c]), c
    from genforge.data.images import load_image_splits

    x, y = load_image_splits("fashion-mnist", train_limit=300).splits["train"]
    attrs = measure(x)
    assert attrs.shape == (len(x), 4) and attrs.min() >= 0
    cap = Captioner(list(TRAIN_NOUNS))
    train, held = cap.captions(y, attrs, 0), cap.captions(y, attrs, 0, held_out=True)
    held_words = {n for ns in HELD_OUT_NOUNS.values() for n in ns if n not in str(TRAIN_NOUNS)}
    assert not any(h in t for t in train for h in held_words)
    assert "a pair of running shoes" in " ".join(cap.prompts(7, held_out=True))
    # a caption is true of the image it was made from
    texts, target = cap.matches(y[:50], attrs[:50], 0, held_out=True)
    assert target.diagonal().all() and len(texts) == 50


def test_english_check():
    words = Captioner(list(TRAIN_NOUNS)).english_words()
    assert looks_english("a pair of running shoes", words)
    assert not looks_english("une paire de chaussures", words)
    assert not looks_english("ein Paar Laufschuhe", words)
    assert not looks_english("一双跑鞋", words)


def test_caption_file_naming_missing_images_is_one_clear_error(tmp_path):
    from PIL import Image

    Image.new("L", (28, 28), 200).save(tmp_path / "a.png")
    (tmp_path / "caps.csv").write_text("image,caption\na.png,a light bag\nb.png,a dark shoe\n")
    with pytest.raises(DataError, match=r"names 1 image\(s\) not found in .*: b.png"):
        load_caption_pairs(tmp_path, tmp_path / "caps.csv")
    (tmp_path / "caps.jsonl").write_text('{"image": "a.png", "caption": "a light bag"}\n'
                                         '{"image": "a.png", "caption": "a bag"}\n')
    x, caps = load_caption_pairs(tmp_path, tmp_path / "caps.jsonl")
    assert x.shape == (2, 1, 28, 28) and caps == ["a light bag", "a bag"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from genforge.train.trainer import fit

    recipe = get_recipe("contrastive")
    cfg = make_config(recipe, dict(TINY))
    out = tmp_path_factory.mktemp("clip") / "run"
    fit("contrastive", cfg, out, log=lambda s: None)
    return out


def test_evaluate_reports_zero_shot_and_recall(tiny_run):
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(tiny_run)
    res = recipe.evaluate(model, cfg, "test")
    for key in ("zeroshot_train", "zeroshot_heldout", "t2i_recall@1", "t2i_recall@5", "t2i_recall@10",
                "i2t_recall@10", "loss"):
        assert key in res and math.isfinite(res[key]), key
    assert 0 <= res["t2i_recall@1"] <= res["t2i_recall@5"] <= res["t2i_recall@10"] <= 1


def _gf(*args, cwd):
    return subprocess.run([sys.executable, "-m", "genforge", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


def test_predict_with_labels_and_one_label(tiny_run, tmp_path):
    from genforge.data.images import load_image_splits
    from PIL import Image

    x, _ = load_image_splits("fashion-mnist", train_limit=50).splits["test"]
    Image.fromarray(x[0, 0].numpy()).save(tmp_path / "img.png")
    p = _gf("predict", str(tiny_run), str(tmp_path / "img.png"), "--labels", "a sneaker,a bag,a dress",
            "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["label"] in ("a sneaker", "a bag", "a dress") and len(r["top"]) == 3
    assert sum(t["probability"] for t in r["top"]) == pytest.approx(1, abs=1e-4)
    p = _gf("predict", str(tiny_run), str(tmp_path / "img.png"), "--labels", "a sneaker", cwd=tmp_path)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "--labels needs at least two labels" in err[0] and "Traceback" not in p.stderr


def test_zero_shot_labels_in_python(tiny_run):
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(tiny_run)
    with pytest.raises(ConfigError, match="at least two labels"):
        recipe.zero_shot(model, cfg, torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "only one")
    probs, names = recipe.zero_shot(model, cfg, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert probs.shape == (2, 10) and names == cfg.classes
