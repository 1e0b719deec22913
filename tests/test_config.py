import pytest

from genforge.config import ConfigError, apply_overrides, from_dict, make_config, parse_sets, to_dict
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
