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
    lr = lines.index("  lr = 0.001  (float, >= 0)")
    assert "learning rate" in lines[lr + 1]
    assert "  optimizer = 'adamw'  (one of: adamw|adam|sgd)" in lines
    assert "  flip = false  (bool)" in lines and "augmentation" in text
    for family in IC.MODELS:  # every family, each under its own heading
        assert any(ln.startswith(f"model.<key> of family {family}") for ln in lines)
    drop = lines.index("  model.dropout = 0.0  (float, in [0, 1))")
    assert "dropout" in lines[drop + 1]
    # TrainConfig's comment on `epochs` reaches the recipe, which redeclares it without one
    assert "used when max_steps == 0" in text


def test_format_keys_of_a_preset_shows_and_marks_its_values():
    _, recipe, preset = resolve("cnn-fashion")
    lines = format_keys("cnn-fashion", recipe, preset).splitlines()
    assert " *model.channels = 32,64,128  (int,..., >= 1)" in lines
    assert " *lr = 0.003  (float, >= 0)" in lines
    assert "  optimizer = 'adamw'  (one of: adamw|adam|sgd)" in lines  # unchanged: no mark


# ---------------------------------------------------------------------------------------
# declared ranges (issue 17 item 1)


@pytest.mark.parametrize("key,value,range_text", [
    ("batch_size", "0", "batch_size must be >= 1"),
    ("epochs", "-1", "epochs must be > 0"),
    ("max_steps", "-5", "max_steps must be >= 0"),
    ("lr", "-1", "lr must be >= 0"),
    ("model.dropout", "1.5", "model.dropout must be in [0, 1)"),
    ("betas", "0.9,1.0", "betas must be in [0, 1)"),
    ("model.channels", "8,0", "model.channels must be >= 1"),
    ("val_fraction", "1", "val_fraction must be in [0, 1)"),
    ("warmup_ratio", "-0.1", "warmup_ratio must be in [0, 1)"),
])
def test_out_of_range_values_name_the_key_and_its_range(key, value, range_text):
    with pytest.raises(ConfigError) as e:
        make_config(IC, {key: value}, from_text=True)
    assert range_text in str(e.value) and f"{key}=" in str(e.value)


def test_a_recipe_redeclaring_a_default_keeps_the_range():
    from genforge.config import field_range

    lm = get_recipe("language-model")
    assert "max_steps" in vars(lm.Config)["__annotations__"]  # redeclared with a new default
    assert field_range(lm.Config, "max_steps").describe() == ">= 0"
    with pytest.raises(ConfigError, match="max_steps must be >= 0"):
        make_config(lm, {"max_steps": -5})


def test_every_numeric_key_of_every_recipe_has_a_range():
    """Sizes, probabilities, counts and rates of TrainConfig, the recipes and their model
    families; `mean` (any value) is the one numeric field without a range."""
    import dataclasses
    import typing

    from genforge.config import field_range
    from genforge.recipes import RECIPES

    missing = []
    for rname in ("image-classify", "image-generate", "reinforce", "language-model",
                  "text-classify", "sequence-classify"):
        assert rname in RECIPES
        recipe = get_recipe(rname)
        for cls in [recipe.Config] + [type(factory()) for factory, _ in recipe.MODELS.values()]:
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                tp = hints[f.name]
                numeric = tp in (int, float) or typing.get_origin(tp) is tuple and \
                    all(a in (int, float, Ellipsis) for a in typing.get_args(tp))
                if numeric and f.name != "mean" and field_range(cls, f.name) is None:
                    missing.append(f"{cls.__module__}.{cls.__name__}.{f.name}")
    assert not missing, missing


def test_ranges_show_in_the_key_listing():
    text = format_keys("image-classify", IC)
    assert "batch_size = 128  (int, >= 1)" in text
    assert "model.dropout = 0.0  (float, in [0, 1))" in text


def test_a_config_built_in_python_is_checked_too():
    from genforge.config import check_ranges

    cfg = make_config(IC)
    cfg.batch_size = 0
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        check_ranges(cfg)


def test_did_you_mean_for_keys_models_and_presets():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        make_config(IC, {"bach_size": "3"}, from_text=True)
    with pytest.raises(ConfigError, match="did you mean 'cnn'"):
        make_config(IC, {"model": "cn"}, from_text=True)
    from genforge.recipes import UnknownRecipe

    with pytest.raises(UnknownRecipe, match="did you mean 'cnn-fashion'"):
        resolve("cnn-fashon")


def test_compact_config_shows_filled_values_in_a_few_lines():
    from genforge.config import format_config_compact

    _, recipe, preset = resolve("cnn-fashion")
    cfg = make_config(recipe, preset)
    cfg.classes = [f"class{i}" for i in range(100)]
    cfg.model_cfg.n_classes = 100
    text = format_config_compact(cfg, recipe)
    assert len(text.splitlines()) <= 8
    assert "model.n_classes=100" in text and "(100 items)" in text and "epochs=11" in text
    assert "optimizer=" not in text  # unchanged defaults stay in config.json only
