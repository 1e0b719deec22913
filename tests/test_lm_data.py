"""Text corpora and the language-model recipe's data path, on real Tiny Shakespeare and on
the user's own files."""
import math

import pytest
import torch

from genforge import config as C
from genforge.data import text as T
from genforge.data.registry import DataError
from genforge.recipes import get_recipe

SHAKESPEARE_CHARS = 1_115_394


def test_tinyshakespeare_tail_holdout():
    corpus = T.load_corpus("tinyshakespeare", val_fraction=0.1)
    assert len(corpus.train) + len(corpus.val) == SHAKESPEARE_CHARS
    assert len(corpus.val) == int(SHAKESPEARE_CHARS * 0.1)
    assert corpus.train.startswith("First Citizen:")
    # the held-out part is the tail of the file, not a sample
    full = corpus.train + corpus.val
    assert full.endswith(corpus.val)


def test_own_file_folder_and_delimited_records(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("hello world\n" * 50, encoding="utf-8")
    c = T.load_corpus(str(f), val_fraction=0.2)
    assert c.train + c.val == "hello world\n" * 50 and len(c.val) == 120

    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second book\n", encoding="utf-8")
    (folder / "a.txt").write_text("first book\n", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("third book\n", encoding="utf-8")
    (folder / "notes.md").write_text("not text data", encoding="utf-8")
    records, sep = T.load_records(str(folder))
    assert records == ["first book", "second book", "third book"] and sep == "\n\n"

    fortunes = tmp_path / "fortunes"
    fortunes.write_text("A stitch in time.\n%\nTwo lines\nof wit.\n%\n\n%\nLast one.\n%\n",
                        encoding="utf-8")
    records, sep = T.load_records(str(fortunes), delimiter="%")
    assert records == ["A stitch in time.", "Two lines\nof wit.", "Last one."]
    c = T.load_corpus(str(fortunes), delimiter="%", val_fraction=0.3)
    # whole records on each side: the last record is held out
    assert c.val == "Last one.\n%\n"
    assert c.train == "A stitch in time.\n%\nTwo lines\nof wit.\n%\n"


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="neither a named text dataset"):
        T.load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        T.load_corpus(str(tmp_path / "empty"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        T.load_corpus(str(bad))
    one = tmp_path / "one_record.txt"
    one.write_text("no delimiters here\n", encoding="utf-8")
    with pytest.raises(DataError, match="record"):
        T.load_corpus(str(one), delimiter="%")


def test_random_windows_are_shifted_and_deterministic_in_seed_and_step():
    tokens = torch.arange(1000, dtype=torch.int16)
    a = T.RandomWindows(tokens, batch_size=4, block_size=8, seed=3)
    batches = [next(a) for _ in range(5)]
    for x, y in batches:
        assert x.shape == (4, 8) and x.dtype == torch.long
        assert torch.equal(y, x + 1)  # y is x shifted by one token
    resumed = T.RandomWindows(tokens, batch_size=4, block_size=8, seed=3, start_step=3)
    assert torch.equal(next(resumed)[0], batches[3][0])
    other = T.RandomWindows(tokens, batch_size=4, block_size=8, seed=4)
    assert not torch.equal(next(other)[0], batches[0][0])
    with pytest.raises(ValueError, match="fewer than one window"):
        T.RandomWindows(tokens[:5], batch_size=2, block_size=8, seed=0)


def test_sequential_windows_predict_every_token_once():
    tokens = torch.arange(103, dtype=torch.int16)
    ys = [y for _, y in T.sequential_windows(tokens, batch_size=3, block_size=10)]
    assert torch.cat([y.reshape(-1) for y in ys]).tolist() == list(range(1, 103))


def test_recipe_bpe_tokenizer_saved_in_run_dir_and_bits_per_byte(tmp_path):
    recipe = get_recipe("language-model")
    cfg = C.make_config(recipe, {**recipe.TEST_CONFIGS["gru-bpe"]})
    model = recipe.build(cfg, run_dir=tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert cfg.model_cfg.vocab_size == 300
    train = recipe.tokens(cfg, "train")
    assert train.dtype == torch.int16 and int(train.max()) < 300
    ev = recipe.evaluate(model, cfg, "val")
    # an untrained model predicts ~uniformly: ln(vocab) nats per token
    assert abs(ev["loss"] - math.log(300)) < 0.2
    assert math.isclose(ev["perplexity"], math.exp(ev["loss"]), rel_tol=1e-9)
    # BPE tokens cover > 1 byte on average, so bits per byte < bits per token
    assert 0 < ev["bits_per_byte"] < ev["loss"] / math.log(2)


def test_recipe_char_bits_per_char_is_loss_in_bits():
    recipe = get_recipe("language-model")
    cfg = C.make_config(recipe, recipe.TEST_CONFIG)
    torch.manual_seed(0)
    model = recipe.build(cfg)
    ev = recipe.evaluate(model, cfg, "val")
    assert cfg.model_cfg.vocab_size == 65
    assert math.isclose(ev["bits_per_char"], ev["loss"] / math.log(2), rel_tol=1e-9)
