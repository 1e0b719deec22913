"""The recipe registry: one line per recipe (name -> module path), imported lazily.

A recipe module follows the contract in docs/recipes.md: `Config`, `MODELS`, `build`,
`batches`, `loss` (or `optimizers` + `update`), `evaluate`, and optional hooks. Every name
the framework reads from a recipe is in one table, genforge/recipes/contract.py (`HOOKS`),
which `check_recipe(module)` checks a recipe against.
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
    "text-embed": "genforge.recipes.text_embed",
    "word-embeddings": "genforge.recipes.word_embeddings",
    "audio-classify": "genforge.recipes.audio_classify",
    "audio-generate": "genforge.recipes.audio_generate",
    "seq2seq": "genforge.recipes.seq2seq",
    "contrastive": "genforge.recipes.contrastive",
    "text2image": "genforge.recipes.text2image",
    "captioning": "genforge.recipes.captioning",
}


class UnknownRecipe(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def recipe_name(recipe: ModuleType) -> str:
    """A recipe module's registry name, as the CLI spells it (`image-classify`)."""
    return next((n for n, path in RECIPES.items() if path == recipe.__name__),
                recipe.__name__.rsplit(".", 1)[-1].replace("_", "-"))


def get_recipe(name: str) -> ModuleType:
    if name not in RECIPES:
        from genforge.config import did_you_mean

        raise UnknownRecipe(
            f"unknown recipe {name!r};{did_you_mean(name, RECIPES)} recipes: {', '.join(RECIPES)} "
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
    from genforge.config import did_you_mean

    raise UnknownRecipe(
        f"unknown recipe or preset {name!r};{did_you_mean(name, [*RECIPES, *presets])} "
        f"Recipes: {', '.join(RECIPES)}; "
        f"presets: {', '.join(presets)}"
    )


# What a run can do beyond its TASK, declared by its recipe as `capabilities(cfg) ->
# frozenset[str]` (optional; none when absent), so the server and `genforge explain` ask the
# recipe instead of testing family names or model attributes. value -> what it promises:
CAPABILITIES: dict[str, str] = {
    "recurrent": "text generation with a carried state instead of a context window: any "
                 "prompt length fits (the server bounds it by --max-prompt-tokens, default 4096)",
    "guidance": "sample(..., guidance=SCALE) applies classifier-free guidance",
    "sampling-steps": "sample(..., steps=N) chooses the number of sampling steps",
    "sampler": "sample(..., sampler=NAME) chooses the diffusion sampler (ddpm, ddim, dpm++)",
    "text-input": "a classifier of token ids (B, T) embedded by `model.embed` (explain "
                  "attributes to those embeddings); `cfg.max_len` and the text vocabulary apply",
    "image-input": "a classifier of normalised images ((x - cfg.mean) / cfg.std at "
                   "cfg.height x cfg.width)",
    "attention-pooling": "every forward keeps its attentive-pooling weights (B, hops, T) in "
                         "`model.attention` (Lin et al. 2017)",
    "self-attention": "forward(tokens, need_weights=True) keeps the last layer's attention "
                      "(B, T, T), mean over heads, in `model.attention`",
    "audio-input": "a classifier of normalised log-mel spectrograms (B, 1, n_mels, frames); "
                   "the recipe's `audio_input(cfg, files)` makes them (explain attributes to them)",
    "text-prompt": "image generation from free text: sample(..., prompt=TEXT) (the server passes "
                   "the request's prompt instead of matching a class name)",
    "translation": "a sequence-to-sequence run: the prompt (completions) or the last user "
                   "message (chat) is a source sentence; the recipe's `translate_stream(model, cfg, "
                   "source, temperature=, top_p=, top_k=, seed=, max_tokens=, stats=)` translates it "
                   "and `cross_attention(model, cfg, text)` gives what explain draws",
}


def capabilities(recipe: ModuleType, cfg) -> frozenset[str]:
    """What `recipe` declares for the run configured by `cfg` (empty when it declares nothing)."""
    declare = getattr(recipe, "capabilities", None)
    caps = frozenset(declare(cfg)) if declare is not None else frozenset()
    unknown = caps - CAPABILITIES.keys()
    if unknown:
        raise ValueError(f"{recipe.__name__}.capabilities declares {', '.join(sorted(unknown))}, "
                         f"which genforge does not know; use values of genforge.recipes.CAPABILITIES "
                         f"({', '.join(CAPABILITIES)})")
    return caps
