"""Word vocabulary, labelled-text loaders (rt-polarity, CSV/TSV/JSONL) and the splits."""
import json

import pytest
import torch

from genforge.data.registry import DataError
from genforge.data.tabular_text import load_labelled_text, load_rt_polarity, load_table, split_indices
from genforge.data.vocab import Vocab, tokenize


def test_tokenize_splits_clitics_and_punctuation():
    assert tokenize("The movie's GREAT, isn't it?") == ["the", "movie", "'s", "great", ",", "is",
                                                        "n't", "it", "?"]
    assert tokenize("co-writer/director") == ["co-writer", "/", "director"]


def test_vocab_min_freq_max_size_unknown_and_json_round_trip(tmp_path):
    texts = ["a a a b b c", "a b d"]
    v = Vocab.build(texts, min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "a", "b"]  # by count, c and d dropped
    assert v.encode("a c b zzz") == [2, 1, 3, 1]
    assert Vocab.build(texts, max_size=3).itos == ["<pad>", "<unk>", "a"]
    assert Vocab.build(texts).itos[2:] == ["a", "b", "c", "d"]  # ties broken alphabetically
    assert v.encode("") == [v.unk_id]
    v.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json").itos == v.itos
    (tmp_path / "bad.json").write_text(json.dumps({"itos": ["x"]}))
    with pytest.raises(ValueError, match="not a genforge word vocabulary"):
        Vocab.load(tmp_path / "bad.json")


def test_rt_polarity_loads_balanced_latin1():
    ds = load_rt_polarity()
    assert len(ds.texts) == 10662 and sum(ds.labels) == 5331
    assert ds.class_names == ["negative", "positive"]
    # the files hold bytes that are not valid UTF-8; latin-1 decodes every line
    assert any(any(ord(ch) > 127 for ch in t) for t in ds.texts)


def test_fixed_split_and_folds_partition_the_data():
    tr, va = split_indices(10662, seed=0)
    assert len(va) == 1066 and len(tr) == 9596
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(10662))
    assert torch.equal(split_indices(10662, seed=0)[1], va)  # seeded: same every time
    vals = [split_indices(103, 5, fold=k)[1] for k in range(10)]
    assert torch.equal(torch.sort(torch.cat(vals)).values, torch.arange(103))
    for k in range(10):
        trk, vak = split_indices(103, 5, fold=k)
        assert len(set(trk.tolist()) & set(vak.tolist())) == 0 and len(trk) + len(vak) == 103
    with pytest.raises(ValueError, match="fold must be in 0..9"):
        split_indices(100, 0, fold=10)


def test_csv_tsv_jsonl_with_configurable_columns(tmp_path):
    (tmp_path / "d.csv").write_text('review,stars\n"good, really",5\nbad,1\nok,3\n')
    ds = load_table(tmp_path / "d.csv", "review", "stars")
    assert ds.texts[0] == "good, really" and ds.class_names == ["1", "3", "5"] and ds.labels == [2, 0, 1]
    (tmp_path / "d.tsv").write_text("text\tlabel\nfine\tpos\nawful\tneg\n")
    assert load_table(tmp_path / "d.tsv").class_names == ["neg", "pos"]
    (tmp_path / "d.jsonl").write_text('{"text": "x", "label": 1}\n\n{"text": "y", "label": 10}\n')
    ds = load_labelled_text(str(tmp_path / "d.jsonl"))
    assert ds.class_names == ["1", "10"] and ds.labels == [0, 1]  # numeric order, not "1" < "10" by chance


def test_missing_column_error_names_the_column(tmp_path):
    (tmp_path / "d.csv").write_text("review,stars\ngood,5\n")
    with pytest.raises(DataError, match=r"no text column 'text' \(columns: 'review', 'stars'\)"):
        load_table(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no label column 'sentiment'"):
        load_table(tmp_path / "d.csv", text_column="review", label_column="sentiment")
    (tmp_path / "e.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(DataError, match="row 2 has no value in column 'label'"):
        load_table(tmp_path / "e.jsonl")


def test_unknown_dataset_and_format_errors(tmp_path):
    with pytest.raises(DataError, match="unknown text dataset 'imdb'"):
        load_labelled_text("imdb")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        load_labelled_text(str(tmp_path / "d.xlsx"))


def test_text_recipes_say_what_they_read_before_training():
    """data_summary (printed by the trainer before step 0): rows per split and per class for
    text-classify, characters per split for language-model."""
    from genforge.config import make_config
    from genforge.recipes import get_recipe

    tc = get_recipe("text-classify")
    lines = tc.data_summary(make_config(tc, {"data": "rt-polarity"}))
    assert lines[0] == "rt-polarity: 10,662 rows -> val 1,066, test 1,066, train 8,530"
    assert lines[1].startswith("2 classes, training rows per class: negative ")
    lm = get_recipe("language-model")
    (line,) = lm.data_summary(make_config(lm, {"data": "tinyshakespeare"}))
    assert line.startswith("tinyshakespeare: train 948,085 characters, val 111,539 characters")
