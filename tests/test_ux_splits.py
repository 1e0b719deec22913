"""Honest splits (issue 17 item 5): for every recipe `eval --split test` reads data that
neither training nor the choice of best.safetensors (on val) saw, or is refused with the
reason; the validation rows / tail stay those of the benchmarks."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from genforge.cli import app
from genforge.config import ConfigError, make_config
from genforge.data.tabular_text import split_indices
from genforge.recipes import get_recipe
from genforge.train.trainer import fit

TC = get_recipe("text-classify")
LM = get_recipe("language-model")


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_text_classify_test_rows_are_held_out_and_val_is_unchanged():
    cfg = make_config(TC, {"data": "rt-polarity"})
    rows = {k: set(v.tolist()) for k, v in TC._split_rows(cfg).items()}
    assert not rows["test"] & rows["val"] and not rows["test"] & rows["train"]
    assert not rows["train"] & rows["val"]
    assert (len(rows["train"]), len(rows["val"]), len(rows["test"])) == (8530, 1066, 1066)
    _, val_90_10 = split_indices(10662, cfg.split_seed, cfg.val_fraction)
    assert rows["val"] == set(val_90_10.tolist())  # the benchmark's validation rows


def test_text_classify_cross_validation_refuses_test():
    cfg = make_config(TC, {"data": "rt-polarity", "fold": 3})
    with pytest.raises(ConfigError, match="cross-validation run .* has no test split"):
        next(iter(TC.batches(cfg, "test")))
    cfg = make_config(TC, {"data": "rt-polarity", "test_fraction": 0.0})
    with pytest.raises(ConfigError, match="test_fraction=0"):
        next(iter(TC.batches(cfg, "test")))


def test_rt_polarity_eval_test_and_val_differ(tmp_path):
    cfg = make_config(TC, {**TC.TEST_CONFIGS["bag"], "eval_batches": 0, "plots": False})
    fit("text-classify", cfg, tmp_path / "run", log=lambda s: None)
    out = {}
    for split in ("val", "test"):
        res = _cli("eval", tmp_path / "run", "--split", split)
        assert res.exit_code == 0, res.output
        out[split] = res.output.split("]", 1)[1].split("(")[0]
    assert out["val"] != out["test"]


def test_language_model_test_text_lies_before_the_validation_tail(tmp_path):
    cfg = make_config(LM, {**LM.TEST_CONFIG})
    parts = LM._corpus(*LM._key(cfg))
    assert parts["test"] and parts["val"] and parts["test"] != parts["val"]
    whole = parts["train"] + parts["test"] + parts["val"]
    assert whole.endswith(parts["test"] + parts["val"])
    n = len(whole)
    assert len(parts["val"]) == int(n * cfg.val_fraction)  # the same tail as the 90/10 split
    assert not torch.equal(LM.tokens(cfg, "test")[:100], LM.tokens(cfg, "val")[:100])


def test_language_model_records_and_refusal(tmp_path):
    data = tmp_path / "q.txt"
    data.write_text("\n%\n".join(f"record number {i}" for i in range(40)) + "\n", encoding="utf-8")
    cfg = make_config(LM, {**LM.TEST_CONFIG, "data": str(data), "delimiter": "%",
                           "val_fraction": 0.1, "test_fraction": 0.1})
    parts = LM._corpus(*LM._key(cfg))
    assert parts["val"].startswith("record number 36") and parts["test"].startswith("record number 32")
    assert "record number 31\n%\n" in parts["train"] and "record number 32" not in parts["train"]
    cfg = make_config(LM, {**LM.TEST_CONFIG, "test_fraction": 0.0})
    with pytest.raises(ConfigError, match="no test split"):
        LM.tokens(cfg, "test")


def test_reinforce_and_image_recipes_have_separate_test_data():
    rl = get_recipe("reinforce")
    cfg = make_config(rl, rl.TEST_CONFIG)
    assert not set(rl._eval_seeds(cfg, "test", 50)) & set(rl._eval_seeds(cfg, "val", 50))
    seq = get_recipe("sequence-classify")  # the one image loader: digits carved 3 ways
    sizes = {k: len(v[1]) for k, v in seq._load(make_config(seq, {"data": "digits"})).splits.items()}
    assert sizes["test"] > 0 and sum(sizes.values()) == 1797, sizes


def test_a_run_saved_before_test_fraction_keeps_its_splits(tmp_path):
    """config.json written before test_fraction existed: read back with test_fraction=0 (the
    run had no test split), not today's default, so `eval --split test` cannot score rows the
    run trained on."""
    import json

    from genforge import config as C
    from genforge.recipes import get_recipe

    for name in ("text-classify", "language-model"):
        recipe = get_recipe(name)
        d = C.to_dict(C.make_config(recipe, {}))
        assert d["test_fraction"] > 0  # today's default
        old = json.loads(json.dumps(d))
        del old["test_fraction"]
        assert C.from_dict(recipe, old).test_fraction == 0.0
        assert C.from_dict(recipe, d).test_fraction == d["test_fraction"]  # saved value wins
