"""Translation end to end on real Multi30k slices: data and its bad inputs, tokenizers,
token-budget batches, BLEU against sacrebleu, and one tiny trained run through the CLI
(train, eval, generate, explain) and the server."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import sacrebleu
import torch
from typer.testing import CliRunner

from genforge.cli import app
from genforge.config import make_config
from genforge.data import parallel as P
from genforge.data.registry import DataError
from genforge.recipes import get_recipe

DATA = Path(os.environ.get("GENFORGE_DATA", "/work/shared/data"))
pytestmark = pytest.mark.skipif(not (DATA / "multi30k" / "train.de.gz").is_file(),
                                reason="needs GENFORGE_DATA with multi30k")
R = get_recipe("seq2seq")
TINY = {**R.TEST_CONFIGS["transformer"]}


def _lines(name: str, n: int) -> list[str]:
    with gzip.open(DATA / "multi30k" / name, "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def test_multi30k_pairs_by_language_keys():
    p = P.load_multi30k("val", "fr", "de")
    assert len(p) == 1014 and p.src[0] == _lines("val.fr.gz", 1)[0] and p.tgt[0] == _lines("val.de.gz", 1)[0]
    assert len(P.load_multi30k("test", "de", "en")) == 1000


@pytest.mark.parametrize("src,tgt,msg", [("", "en", "missing its src language"),
                                         ("de", "", "missing its tgt language"),
                                         ("es", "en", "src='es'"), ("de", "de", "both 'de'")])
def test_language_pair_errors(src, tgt, msg):
    with pytest.raises(DataError, match=msg):
        P.load_multi30k("val", src, tgt)


def test_misaligned_files_name_both_counts_and_where(tmp_path):
    a, b = tmp_path / "a.de", tmp_path / "b.en"
    a.write_text("Ein Hund.\nZwei Katzen.\nDrei.\n", encoding="utf-8")
    b.write_text("A dog.\nTwo cats.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.de has 3 lines, .*b.en has 2; .*b.en ends at line 2, so "
                                        r"line 3 of .*a.de has no partner"):
        P.load_user_pairs(f"{a},{b}")


def test_empty_lines_are_skipped_and_counted(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("Ein Hund.\tA dog.\n\nZwei.\t \n \tTwo.\nDrei.\tThree.\n", encoding="utf-8")
    p = P.load_user_pairs(str(tsv))
    assert p.src == ["Ein Hund.", "Drei."] and p.tgt == ["A dog.", "Three."] and p.skipped == 3
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1: expected source<TAB>target"):
        P.load_user_pairs(str(bad))


def test_user_pairs_train_with_fixed_splits(tmp_path):
    src, tgt = _lines("train.de.gz", 200), _lines("train.en.gz", 200)
    (tmp_path / "t.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    cfg = make_config(R, {**TINY, "data": f"{tmp_path / 't.de'},{tmp_path / 't.en'}",
                          "max_train_pairs": 0, "val_fraction": 0.1, "test_fraction": 0.1})
    sizes = [len(R.pairs(cfg, s)) for s in ("train", "val", "test")]
    assert sizes == [160, 20, 20]
    seen = set()
    for s in ("train", "val", "test"):
        p = R.pairs(cfg, s)
        seen |= set(zip(p.src, p.tgt))
    assert seen == set(zip(src, tgt))  # every pair once, none lost between splits


def test_bpe_round_trips_text_exactly():
    text = _lines("val.de.gz", 50) + _lines("val.fr.gz", 50) + ["  zwei  Leerzeichen\tund ein Tab", "日本語 ✓"]
    tok = P.train_bpe(_lines("train.de.gz", 500) + _lines("train.en.gz", 500), 600)
    for t in text:
        ids = tok.encode(t)
        assert P.PAD not in ids and P.BOS not in ids and P.EOS not in ids
        assert tok.decode(ids) == t


def test_bleu_and_chrf_are_sacrebleus_on_detokenised_text():
    refs = _lines("val.en.gz", 40)
    # hypotheses: each reference with a word dropped, round-tripped through the tokenizer
    tok = P.train_bpe(_lines("train.en.gz", 500), 500)
    hyps = [tok.decode(tok.encode(" ".join(r.split()[1:]))) for r in refs]
    assert hyps == [" ".join(r.split()[1:]) for r in refs]
    got = R.corpus_scores(hyps, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert got["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert R.corpus_scores(refs, refs)["bleu"] == pytest.approx(100.0)


def test_token_budget_batches_are_deterministic_and_low_padding():
    cfg = make_config(R, {**TINY, "max_train_pairs": 2000, "batch_tokens": 1000})
    R.build(cfg)
    a = R.batches(cfg, "train")
    first = [next(a) for _ in range(a.steps_per_epoch + 5)]  # into the second epoch
    resumed = R.batches(cfg, "train", start_step=a.steps_per_epoch + 2)
    for want in first[a.steps_per_epoch + 2:]:
        got = next(resumed)
        assert all(torch.equal(want[k], got[k]) for k in want)
    real = sum(int((b["src"] != 0).sum()) for b in first)
    padded = sum(b["src"].numel() for b in first)
    assert all(b["src"].numel() <= 1000 and b["tgt_in"].numel() <= 1000 for b in first)
    assert real / padded > 0.8  # length buckets: most of each batch is real tokens
    # every pair exactly once per epoch
    n = sum(b["src"].size(0) for b in first[:a.steps_per_epoch])
    assert n == 2000


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("s2s") / "run"
    sets = [f"{k}={v}" for k, v in {**TINY, "max_steps": 6, "eval_every": 6, "plots": False}.items()]
    res = CliRunner().invoke(app, ["train", "seq2seq", "--out", str(run), *sum((["--set", s] for s in sets), [])])
    assert res.exit_code == 0, res.output
    assert (run / "tokenizer.src.json").is_file() and (run / "tokenizer.tgt.json").is_file()
    return run


def test_cli_eval_generate_and_explain(tiny_run, tmp_path):
    cli = CliRunner()
    res = cli.invoke(app, ["eval", str(tiny_run), "--split", "test", "--beams", "2"])
    assert res.exit_code == 0, res.output
    assert "bleu=" in res.output and "chrf=" in res.output and "sacrebleu bleu signature: nrefs:1" in res.output
    hyps = (tiny_run / "hypotheses_test.txt").read_text(encoding="utf-8").split("\n")
    assert len(hyps) == 1000 + 1  # one line per test sentence (+ the final newline)
    res = cli.invoke(app, ["eval", str(tiny_run), "--beams", "0"])
    assert res.exit_code != 0 and "--beams must be >= 1" in res.output

    res = cli.invoke(app, ["generate", str(tiny_run), "--prompt", "Ein Mann fährt Fahrrad.",
                           "--prompt", "Zwei Hunde.", "--beams", "2"])
    assert res.exit_code == 0, res.output
    assert len(res.stdout.strip("\n").split("\n")) == 2
    inp = tmp_path / "in.txt"
    inp.write_text("Ein Hund.\n\nEine Frau.\n" + "sehr " * 300 + "\n", encoding="utf-8")
    res = cli.invoke(app, ["generate", str(tiny_run), "--input", str(inp), "--out", str(tmp_path / "o.txt")])
    assert res.exit_code == 0, res.output
    assert "skipped 1 empty lines" in res.output
    assert "source 3 is longer than the model's maximum of 128 tokens; translated its first 128" in res.output
    assert len((tmp_path / "o.txt").read_text(encoding="utf-8").splitlines()) == 3
    res = cli.invoke(app, ["generate", str(tiny_run), "--prompt", "Hund", "--beams", "0"])
    assert res.exit_code != 0 and "--beams must be >= 1" in res.output

    png = tmp_path / "attn.png"
    res = cli.invoke(app, ["explain", str(tiny_run), "Ein Mann fährt Fahrrad.", "--out", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_attention_rows_are_distributions(tiny_run):
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(tiny_run)
    att = recipe.cross_attention(model, cfg, "Ein Mann fährt Fahrrad.", tiny_run)
    w = att["weights"]
    assert w.shape == (len(att["target_tokens"]), len(att["source_tokens"]))
    torch.testing.assert_close(w.sum(-1), torch.ones(w.size(0)))


def test_server_translates_through_completions_and_chat(tiny_run):
    from fastapi.testclient import TestClient

    from genforge.serve.app import create_app
    from genforge.serve.engine import Limits, load_models
    from genforge.train.checkpoint import load_run

    models = load_models([tiny_run])
    assert models["run"].capabilities == {"translation"}
    recipe, cfg, model = load_run(tiny_run)
    want = recipe.translate(model, cfg, ["Ein Mann fährt Fahrrad."])[0]["text"]  # beam = cfg.beams
    with TestClient(create_app(models, Limits(workers=1))) as c:
        r = c.post("/v1/completions", json={"model": "run", "prompt": "Ein Mann fährt Fahrrad."})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want
        r = c.post("/v1/chat/completions", json={"model": "run", "messages": [
            {"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Ein Mann fährt Fahrrad."}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want
        r = c.post("/v1/completions", json={"model": "run", "prompt": "sehr " * 300})
        assert r.status_code == 400 and "maximum context length is 128" in r.text
