"""The same contract test over every registered recipe and each of its tiny test configs:
forward shapes/backward, two train steps through the trainer, save/load round trip with
identical predictions, and sampling where the recipe generates."""
import math

import pytest
import torch

from genforge.config import from_dict, make_config, to_dict
from genforge.recipes import RECIPES, get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train.trainer import fit


def _cases():
    out = []
    for rname in RECIPES:
        mod = get_recipe(rname)
        configs = dict(getattr(mod, "TEST_CONFIGS", {}))
        if hasattr(mod, "TEST_CONFIG"):
            configs["default"] = mod.TEST_CONFIG
        assert configs, f"recipe {rname} defines no TEST_CONFIG(S)"
        out += [pytest.param(rname, dict(ov), id=f"{rname}:{name}") for name, ov in configs.items()]
    return out


def _finite_scalars(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)):
            assert math.isfinite(v), f"{k} is not finite: {v}"
            out[k] = v
    return out


@pytest.mark.parametrize("rname,overrides", _cases())
def test_recipe_contract(rname, overrides, tmp_path):
    recipe = get_recipe(rname)
    cfg = make_config(recipe, overrides)
    torch.manual_seed(0)
    model = recipe.build(cfg)
    # every model family must be fully described by its saved config
    assert from_dict(recipe, {"recipe": rname, **to_dict(cfg)}) == cfg

    # one forward/backward (or one custom update) on a real batch
    batch = next(iter(recipe.batches(cfg, "train", model=model)))
    if hasattr(recipe, "update"):
        opts = recipe.optimizers(model, cfg)
        logs = recipe.update(model, batch, opts, 0, cfg)
        assert _finite_scalars(logs)
    else:
        out = recipe.loss(model, batch)
        assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
        out["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the model"

    # two optimizer steps through the trainer, then a round trip through the run directory
    cfg.max_steps, cfg.eval_every, cfg.plots = 2, 2, False
    run = fit(rname, cfg, tmp_path / "run", log=lambda s: None)
    for name in ("config.json", "model.safetensors", "trainer_state.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    rec1, cfg1, m1 = ckpt.load_run(run, "last")
    rec2, cfg2, m2 = ckpt.load_run(run, "last")
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    torch.manual_seed(1)
    ev1 = _finite_scalars(rec1.evaluate(m1, cfg1, "val"))
    torch.manual_seed(1)
    ev2 = _finite_scalars(rec2.evaluate(m2, cfg2, "val"))
    assert ev1 and ev1 == ev2

    if hasattr(recipe, "sample"):
        torch.manual_seed(0)
        s = recipe.sample(m1, cfg1, **getattr(recipe, "TEST_SAMPLE", {}))
        assert s is not None
