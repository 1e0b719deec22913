"""Tokenizers: round trips (hypothesis property tests), save/load, clear errors."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genforge.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer, train_tokenizer


TRAIN = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
         "Über naïve café — 東京 🙂\n") * 20


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAIN, vocab_size=300)


@settings(max_examples=200, deadline=None)
@given(st.text())  # arbitrary Unicode, including surrogate-free astral characters and controls
def test_bpe_round_trips_any_text(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=sorted(set(TRAIN))))
def test_char_round_trips_text_over_its_alphabet(text):
    tok = CharTokenizer.train(TRAIN)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_bpe_learns_merges(bpe):
    assert bpe.vocab_size == 300
    # merges make common text shorter than its bytes
    assert len(bpe.encode("Speak, speak.")) < len("Speak, speak.".encode())


def test_save_load(tmp_path, bpe):
    char = train_tokenizer("char", TRAIN)
    for tok in (char, bpe):
        tok.save(tmp_path / f"{tok.kind}.json")
        back = load_tokenizer(tmp_path / f"{tok.kind}.json")
        assert type(back) is type(tok)
        assert back.vocab_size == tok.vocab_size
        assert back.encode(TRAIN[:200]) == tok.encode(TRAIN[:200])


def test_clear_errors():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match="never saw: 'xz'"):
        tok.encode("axz")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        train_tokenizer("wordpiece", "abc")
    with pytest.raises(ValueError, match="vocab_size >= 257"):
        BPETokenizer.train("abc", vocab_size=100)
