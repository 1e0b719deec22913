"""The recipe registry: one line per recipe (name -> module path), imported lazily.

A recipe module follows the contract in docs/recipes.md: `Config`, `MODELS`, `build`,
`batches`, `loss` (or `optimizers` + `update`), `evaluate`, and optionally `predict`,
`sample`, `log_samples`, `PRESETS` and `TEST_CONFIG`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

RECIPES: dict[str, str] = {
    "image-classify": "genforge.recipes.image_classify",
    "image-generate": "genforge.recipes.image_generate",
    "reinforce": "genforge.recipes.reinforce",
    "language-model": "genforge.recipes.language_model",
    "text-classify": "genforge.recipes.text_classify",
    "sequence-classify": "genforge.recipes.sequence_classify",
}


class UnknownRecipe(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def get_recipe(name: str) -> ModuleType:
    if name not in RECIPES:
        raise UnknownRecipe(
            f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)} "
            f"(presets: `genforge list`)"
        )
    return importlib.import_module(RECIPES[name])


def all_presets() -> dict[str, tuple[str, dict, str]]:
    """preset name -> (recipe name, overrides, description), gathered from every recipe."""
    out: dict[str, tuple[str, dict, str]] = {}
    for rname in RECIPES:
        mod = get_recipe(rname)
        for pname, (overrides, desc) in getattr(mod, "PRESETS", {}).items():
            out[pname] = (rname, overrides, desc)
    return out


def resolve(name: str) -> tuple[str, ModuleType, dict]:
    """A recipe or preset name -> (recipe name, recipe module, preset overrides)."""
    if name in RECIPES:
        return name, get_recipe(name), {}
    presets = all_presets()
    if name in presets:
        rname, overrides, _ = presets[name]
        return rname, get_recipe(rname), dict(overrides)
    raise UnknownRecipe(
        f"unknown recipe or preset {name!r}. Recipes: {', '.join(RECIPES)}; "
        f"presets: {', '.join(presets)}"
    )
