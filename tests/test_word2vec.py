"""word2vec (genforge/models/word2vec.py) and the word-embeddings recipe: the subsampling and
noise distributions against their formulas, pairs within sentences and windows, the loss
falling on a tiny corpus, `embed`/`eval` on a run, and text-classify's init_embeddings."""
import math

import pytest
import torch

from genforge.config import ConfigError, make_config
from genforge.models import word2vec as W
from genforge.recipes import get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train.trainer import fit

WE, TC = get_recipe("word-embeddings"), get_recipe("text-classify")
QUIET = dict(log=lambda s: None)


def test_noise_distribution_formula():
    counts = torch.tensor([0, 1, 10, 100, 1000])
    p = W.noise_distribution(counts, 0.75)
    z = sum(c ** 0.75 for c in counts.tolist())
    torch.testing.assert_close(p, torch.tensor([c ** 0.75 / z for c in counts.tolist()]))
    assert abs(float(p.sum()) - 1) < 1e-6


def test_subsampling_formula_and_rate():
    counts = torch.tensor([1_000_000, 10_000, 100, 1])
    t = 1e-3
    keep = W.keep_probabilities(counts, t)
    total = counts.sum().item()
    expected = [min(1.0, math.sqrt(t / (c / total))) for c in counts.tolist()]
    torch.testing.assert_close(keep, torch.tensor(expected, dtype=torch.float))
    assert keep[0] < 0.04 and keep[-1] == 1  # the frequent word mostly goes, the rare one stays
    # the empirical rate matches: 200k draws of word 0 and of word 1
    tokens = torch.tensor([0] * 200_000 + [1] * 200_000)
    kept = W.subsample(tokens, keep, torch.Generator().manual_seed(0))
    assert abs(kept[:200_000].float().mean() - keep[0]) < 0.003
    assert abs(kept[200_000:].float().mean() - keep[1]) < 0.005
    assert torch.equal(W.keep_probabilities(counts, 0), torch.ones(4))


def test_pairs_stay_in_sentences_and_windows():
    tokens = torch.arange(10, 30)
    sentence = torch.tensor([0] * 7 + [1] * 13)
    center, context = W.skipgram_pairs(tokens, sentence, 3, torch.Generator().manual_seed(0))
    pos = {int(t): i for i, t in enumerate(tokens)}
    for c, o in zip(center.tolist(), context.tolist()):
        assert sentence[pos[c]] == sentence[pos[o]] and 1 <= abs(pos[c] - pos[o]) <= 3
    # every neighbour at distance 1 is always in the window (b >= 1)
    pairs = set(zip(center.tolist(), context.tolist()))
    assert all((10 + i, 11 + i) in pairs for i in range(6)) and (16, 17) not in pairs
    c2, ctx = W.cbow_windows(tokens, sentence, 2, 0, torch.Generator().manual_seed(0))
    assert ctx.shape[1] == 4 and (ctx[c2 == 16] != 0).sum() >= 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("w2v") / "tiny.txt"
    rng = torch.Generator().manual_seed(0)
    animals, foods = ["cat", "dog", "horse", "cow"], ["bread", "rice", "soup", "cake"]
    lines = []
    for _ in range(600):
        a = animals[int(torch.randint(4, (1,), generator=rng))]
        f = foods[int(torch.randint(4, (1,), generator=rng))]
        lines += [f"the {a} runs in the field", f"we eat {f} with a spoon"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(corpus, **kw):
    return make_config(WE, {"data": str(corpus), "min_freq": 1, "batch_size": 64, "model.dim": 16,
                            "model.window": 2, "model.negatives": 4, "model.subsample": 0,
                            "lr": 1e-2, "max_steps": 150, "eval_batches": 4, "plots": False,
                            "probe_words": "cat,bread,zebra", **kw})


@pytest.mark.parametrize("cbow", [False, True])
def test_loss_decreases_on_tiny_corpus(corpus, cbow):
    cfg = _cfg(corpus, **{"model.cbow": cbow})
    torch.manual_seed(0)
    model = WE.build(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = WE.evaluate(model, cfg, "val")["loss"]
    assert abs(before - 5 * math.log(2)) < 1e-3  # zero output vectors: sigma(0) for 1 + k words
    for _, batch in zip(range(150), WE.batches(cfg, "train")):
        opt.zero_grad()
        WE.loss(model, batch)["loss"].backward()
        opt.step()
    after = WE.evaluate(model, cfg, "val")
    assert after["loss"] < 0.7 * before
    # words in the same slot of the same sentence frame end up closest
    near = [w for w, _ in after["neighbours"]["cat"][:3]]
    assert set(near) <= {"dog", "horse", "cow"}, near
    assert "zebra" in after["report"]  # probe words the vocabulary lacks are named


@pytest.fixture(scope="module")
def w2v_run(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("w2v") / "run"
    fit("word-embeddings", _cfg(corpus), run, **QUIET)
    return run


def test_embed_and_eval_on_run(w2v_run, capsys):
    recipe, cfg, model = ckpt.load_run(w2v_run)
    out = recipe.embed(model, cfg, ["cat", "the cat", "zebra"])
    v = out["vectors"]
    assert v.shape == (3, 16) and out["tokens"] == 3
    torch.testing.assert_close(v[0], model.in_emb.weight[model.vocab.stoi["cat"]])
    torch.testing.assert_close(v[1], model.in_emb.weight[[model.vocab.stoi["the"], model.vocab.stoi["cat"]]].mean(0))
    assert torch.equal(v[2], torch.zeros(16)) and "zebra" in capsys.readouterr().err
    from typer.testing import CliRunner

    from genforge.cli import app

    res = CliRunner().invoke(app, ["eval", str(w2v_run)])
    assert res.exit_code == 0, res.output
    assert "nearest neighbours" in res.output and "cat:" in res.output
    # `genforge embed` on the run: the same vectors as recipe.embed, written as .npy
    import numpy as np

    res = CliRunner().invoke(app, ["embed", str(w2v_run), "cat", "the cat", "--out", str(w2v_run.parent / "v.npy")])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.load(w2v_run.parent / "v.npy"), v[:2].numpy(), rtol=0, atol=1e-6)


def test_init_embeddings_copies_rows(w2v_run, corpus, tmp_path, capsys):
    cfg = make_config(TC, {"data": str(_labelled(corpus, tmp_path)), "model": "cnn", "max_len": 12,
                           "model.emb_dim": 16, "model.n_filters": 4, "init_embeddings": str(w2v_run)})
    model = TC.build(cfg)
    _, _, w2v = ckpt.load_run(w2v_run)
    vocab = TC.vocabulary(cfg)
    for word in ("cat", "bread", "spoon"):
        torch.testing.assert_close(model.embed.weight[vocab.stoi[word]], w2v.in_emb.weight[w2v.vocab.stoi[word]])
    assert torch.equal(model.embed.weight[0], torch.zeros(16))  # <pad> stays zero
    n_words = len(vocab) - 2  # every word of the labelled rows is in the corpus
    assert f"{n_words:,} of {n_words:,} words found" in capsys.readouterr().out
    TC._VOCABS.clear()
    TC.build(make_config(TC, {"data": str(_labelled(corpus, tmp_path)), "model": "cnn", "max_len": 12,
                              "model.emb_dim": 16, "init_embeddings": str(w2v_run)}))
    with pytest.raises(ConfigError, match="model.emb_dim=16"):
        TC.build(make_config(TC, {"data": str(_labelled(corpus, tmp_path)), "model": "cnn",
                                  "model.emb_dim": 8, "init_embeddings": str(w2v_run)}))
    with pytest.raises(ConfigError, match="word-level"):
        TC.build(make_config(TC, {"data": str(_labelled(corpus, tmp_path)), "model": "cnn",
                                  "tokenizer": "bpe", "bpe_vocab": 300, "model.emb_dim": 16,
                                  "init_embeddings": str(w2v_run)}))


def test_init_embeddings_static_stays_fixed(w2v_run, corpus, tmp_path):
    data = str(_labelled(corpus, tmp_path))
    cfg = make_config(TC, {"data": data, "model": "cnn", "max_len": 12, "model.emb_dim": 16,
                           "model.n_filters": 4, "init_embeddings": str(w2v_run), "freeze": "embed",
                           "max_steps": 3, "batch_size": 16, "plots": False, "eval_batches": 1})
    out = fit("text-classify", cfg, tmp_path / "static", **QUIET)
    _, rcfg, model = ckpt.load_run(out)
    _, _, w2v = ckpt.load_run(w2v_run)
    vocab = TC.vocabulary(rcfg)
    torch.testing.assert_close(model.embed.weight[vocab.stoi["dog"]], w2v.in_emb.weight[w2v.vocab.stoi["dog"]])


def _labelled(corpus, tmp_path):
    path = tmp_path / "labelled.csv"
    if not path.is_file():
        rows = ["text,label"] + [f"{ln},{'animal' if 'runs' in ln else 'food'}"
                                 for ln in corpus.read_text().splitlines()[:400]]
        path.write_text("\n".join(rows) + "\n")
    return path
