"""Generation as a new user meets it (issue 17): the CLI and the server stop at the same
place (item 4), and a class label is a name first, an index only when no name matches, and
the class used is printed (item 6)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from genforge.cli import app
from genforge.config import ConfigError, make_config
from genforge.generate.labels import parse_label
from genforge.recipes import get_recipe
from genforge.serve.app import create_app
from genforge.serve.engine import Limits, load_models
from genforge.train.trainer import fit

WORDS = "the cat sat on a mat and ran to see my dog who was out in sun".split()


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def quotes_run(tmp_path_factory) -> Path:
    """A character GPT trained on short %-delimited records: it learns to end each record
    with a line holding only %, then to start another one."""
    root = tmp_path_factory.mktemp("quotes")
    rng = random.Random(0)
    records = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(400)]
    data = root / "quotes.txt"
    data.write_text("\n%\n".join(records) + "\n%\n", encoding="utf-8")
    cfg = make_config(get_recipe("language-model"), {
        "data": str(data), "delimiter": "%", "max_steps": 150, "batch_size": 16, "lr": 3e-3,
        "warmup_steps": 0, "eval_every": 150, "eval_batches": 1, "model.block_size": 32,
        "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "sample_tokens": 5,
        "plots": False})
    fit("language-model", cfg, root / "run", log=lambda s: None)
    return root / "run"


def test_cli_and_server_stop_at_the_end_of_a_record(quotes_run):
    # a chat template in the run's own alphabet: the chat prompt is the user's text itself
    (quotes_run / "chat_template.json").write_text('{"user": "{content}", "generation": "", "stop": []}')
    client = TestClient(create_app(load_models([quotes_run]), Limits()))
    stopped = 0
    for seed in range(4):
        res = _cli("generate", quotes_run, "--prompt", "the", "--max-tokens", 80,
                   "--temperature", 1.0, "--seed", seed)
        assert res.exit_code == 0, res.output
        cli_text = res.output.rstrip("\n").removeprefix("the")
        r = client.post("/v1/completions", json={"model": quotes_run.name, "prompt": "the",
                                                 "max_tokens": 80, "temperature": 1.0, "seed": seed})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == cli_text  # same seed, same rule: the same text
        assert "\n%\n" not in choice["text"]
        stopped += choice["finish_reason"] == "stop"
        chat = client.post("/v1/chat/completions", json={
            "model": quotes_run.name, "messages": [{"role": "user", "content": "the"}],
            "max_tokens": 80, "seed": seed})
        assert chat.status_code == 200, chat.text
        assert "\n%\n" not in chat.json()["choices"][0]["message"]["content"]
    assert stopped >= 3  # the records are 2-4 words: 80 characters run past the end of one


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_parse_label_names_first_then_index():
    numeric = ["1", "10", "2"]
    assert parse_label(numeric, "2") == 2 and parse_label(numeric, "10") == 1
    assert parse_label(numeric, "1") == 0  # the class named "1", not index 1
    words = sorted(NUMBER_WORDS)
    assert parse_label(words, "Seven") == words.index("seven")
    assert parse_label(words, "7") == 7  # no class named "7": index 7 (alphabetically "three")
    with pytest.raises(ConfigError, match="names no class and index 12 is out of range"):
        parse_label(words, "12")
    with pytest.raises(ConfigError, match="unknown label 'spaceship'"):
        parse_label(words, "spaceship")


@pytest.fixture(scope="module")
def words_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("words")
    for i, name in enumerate(NUMBER_WORDS):
        (root / "data" / name).mkdir(parents=True)
        for k in range(3):
            Image.new("L", (28, 28), color=20 * i + k).save(root / "data" / name / f"{k}.png")
    cfg = make_config(get_recipe("image-generate"), {
        "model": "gan", "data": str(root / "data"), "max_steps": 1, "batch_size": 4,
        "eval_batches": 1, "sample_grid": 1, "plots": False, "test_fraction": 0.2,
        "val_fraction": 0.2, "model.g_channels": 4, "model.d_channels": 4, "model.z_dim": 8})
    fit("image-generate", cfg, root / "run", log=lambda s: None)
    return root / "run"


def test_generate_label_prints_the_class_used(words_run, tmp_path):
    res = _cli("generate", words_run, "--n", 2, "--label", "SEVEN", "--out", tmp_path / "a.png")
    assert res.exit_code == 0, res.output
    assert "label: seven\n" in res.output
    res = _cli("generate", words_run, "--n", 2, "--label", "7", "--out", tmp_path / "b.png")
    assert res.exit_code == 0, res.output
    assert "label: three (no class is named '7', so it was read as index 7" in res.output
