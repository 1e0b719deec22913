from dataclasses import dataclass
from typing import Literal

import pytest

from genforge.config import (ConfigError, apply_overrides, field_comments, format_keys, from_dict,
                             make_config, parse_sets, to_dict)
from genforge.recipes import get_recipe, resolve

IC = get_recipe("image-classify")


def test_defaults_and_typed_overrides():
    cfg = make_config(IC, parse_sets(["lr=3e-4", "epochs=2", "model=mlp", "model.hidden=128,64",
                                      "flip=true", "betas=0.8,0.95"]), from_text=True)
    assert cfg.lr == 3e-4 and cfg.epochs == 2.0 and cfg.flip is True
    assert cfg.model == "mlp" and cfg.model_cfg.hidden == (128, 64)
    assert cfg.betas == (0.8, 0.95)


def test_model_key_applies_before_family_keys_in_any_order():
    cfg = make_config(IC, {"model.hidden": "32", "model": "mlp"}, from_text=True)
    assert cfg.model_cfg.hidden == (32,)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        make_config(IC, {"learning_rate": "1"}, from_text=True)
    msg = str(e.value)
    assert "learning_rate" in msg and "lr" in msg and "batch_size" in msg


def test_unknown_family_key_and_bad_values():
    with pytest.raises(ConfigError, match="model.n_layer"):
        make_config(IC, {"model": "cnn", "model.n_layer": "2"}, from_text=True)
    with pytest.raises(ConfigError, match="expected an integer"):
        make_config(IC, {"batch_size": "many"}, from_text=True)
    with pytest.raises(ConfigError, match="one of"):
        make_config(IC, {"optimizer": "rmsprop"}, from_text=True)
    with pytest.raises(ConfigError, match="unknown model"):
        make_config(IC, {"model": "transformer9000"}, from_text=True)
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["lr"])


def test_json_round_trip():
    _, recipe, preset = resolve("cnn-fashion")
    cfg = make_config(recipe, preset)
    assert from_dict(recipe, {"recipe": "image-classify", **to_dict(cfg)}) == cfg


def test_apply_overrides_keeps_family_settings_when_model_unchanged():
    cfg = make_config(IC, {"model": "mlp", "model.hidden": (8,)})
    apply_overrides(cfg, {"model": "mlp"}, IC.MODELS)
    assert cfg.model_cfg.hidden == (8,)


# ---------------------------------------------------------------------------------------
# help text from the comments next to the fields


@dataclass
class _Documented:
    plain: int = 1
    same_line: int = 2  # the comment on the field's line
    continued: float = 0.5  # a comment that goes on
    # onto the next line
    uncommented: int = 0
    # describes the field below it
    above: str = "x"

    # a blank line ends a comment: this describes `both`
    both: bool = False  # and so does this
    choice: Literal["a", "b"] = "a"

    def method(self) -> None:
        # a comment in a method belongs to no field
        pass


@dataclass
class _Subclass(_Documented):
    same_line: int = 3  # a default changed without a comment keeps the base class's
    plain: int = 4
    continued: float = 0.7


def test_field_comments_rules():
    notes = field_comments(_Documented)
    assert "plain" not in notes and "uncommented" not in notes
    assert notes["same_line"] == "the comment on the field's line"
    assert notes["continued"] == "a comment that goes on onto the next line"
    assert notes["above"] == "describes the field below it"
    assert notes["both"] == "a blank line ends a comment: this describes `both`; and so does this"
    assert "choice" not in notes
    sub = field_comments(_Subclass)
    assert sub["same_line"] == "a default changed without a comment keeps the base class's"
    assert sub["continued"] == "a comment that goes on onto the next line"
    assert "plain" not in sub


def test_field_comments_without_source_are_empty():
    namespace: dict = {"dataclass": dataclass}
    exec("@dataclass\nclass NoSource:\n    a: int = 1  # unseen\n", namespace)
    assert field_comments(namespace["NoSource"]) == {}


def test_format_keys_lists_every_key_with_type_default_and_help():
    text = format_keys("image-classify", IC)
    lines = text.splitlines()
    assert "--set KEY=VALUE" in text
    lr = lines.index("  lr = 0.001  (float)")
    assert "learning rate" in lines[lr + 1]
    assert "  optimizer = 'adamw'  (one of: adamw|adam|sgd)" in lines
    assert "  flip = false  (bool)" in lines and "augmentation" in text
    for family in IC.MODELS:  # every family, each under its own heading
        assert any(ln.startswith(f"model.<key> of family {family}") for ln in lines)
    drop = lines.index("  model.dropout = 0.0  (float)")
    assert "dropout" in lines[drop + 1]
    # TrainConfig's comment on `epochs` reaches the recipe, which redeclares it without one
    assert "used when max_steps == 0" in text


def test_format_keys_of_a_preset_shows_and_marks_its_values():
    _, recipe, preset = resolve("cnn-fashion")
    lines = format_keys("cnn-fashion", recipe, preset).splitlines()
    assert " *model.channels = 32,64,128  (int,...)" in lines
    assert " *lr = 0.003  (float)" in lines
    assert "  optimizer = 'adamw'  (one of: adamw|adam|sgd)" in lines  # unchanged: no mark
