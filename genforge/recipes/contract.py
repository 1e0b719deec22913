"""The recipe contract in one table: every name the framework reads from a recipe module.

`HOOKS` is the single list: docs/recipes.md shows it (`python -m genforge.recipes.contract`
prints the Markdown table, and tests/test_contract.py fails when the doc and this table
differ), and `check_recipe(module)` checks a recipe against it: required names present,
each name of the right kind, each function callable the way its callers call it.

A function's `args` are what its callers pass by position, `keywords` what they pass by
name, which may be left out by some caller (so those parameters need defaults). The
signature check binds placeholder values to the function's signature; it proves the call
fits, not what the function does: that is the job of the contract test over every recipe.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from types import ModuleType

REQUIRED, OPTIONAL = "required", "optional"
# loss recipes define `loss`; families whose update is not one loss and one optimiser (GAN,
# DQN, policy gradient) define `optimizers` + `update` instead. A recipe may define both
# (image-generate: `loss` for the one-optimiser families); the trainer then uses `update`.
LOSS_OR_UPDATE = "loss, or optimizers + update"
TEST_CONFIG_OR_CONFIGS = "TEST_CONFIG or TEST_CONFIGS"  # what tests/test_contract.py runs

# what `genforge serve` offers per TASK (genforge/serve/engine.py's TASK_ENDPOINTS has the
# same keys) and the hooks the server then calls
TASK_HOOKS: dict[str, tuple[str, ...]] = {
    "text-generation": ("tokenizer",),
    "image-generation": ("parse_label", "sample"),
    "image-classification": ("classify",),
    "text-classification": ("classify",),
    "embedding": ("embed",),
    "audio-classification": ("classify",),
    "audio-generation": ("parse_label", "sample"),
}
# keywords the server passes to `sample` of an image-generation recipe
IMAGE_SAMPLE_KEYWORDS = ("n", "label", "guidance", "steps", "seed")


@dataclass(frozen=True)
class Hook:
    kind: str  # "function" | "dataclass" | "dict" | "str" | "bool"
    required: str  # REQUIRED | OPTIONAL | LOSS_OR_UPDATE | TEST_CONFIG_OR_CONFIGS; TASK_HOOKS adds
    # what a TASK requires
    called_by: str
    guarantee: str
    args: tuple[str, ...] = ()  # functions: passed by position
    keywords: tuple[str, ...] = ()  # functions: passed by name, sometimes left out
    var_keywords: bool = False  # functions: callers pass further keywords of their own

    def signature(self, name: str) -> str:
        if self.kind != "function":
            return {"dataclass": "class", "dict": "dict", "str": "str", "bool": "bool"}[self.kind]
        parts = list(self.args) + [f"{k}=..." for k in self.keywords] + (["**kw"] if self.var_keywords else [])
        return f"{name}({', '.join(parts)})"


HOOKS: dict[str, Hook] = {
    "Config": Hook("dataclass", REQUIRED, "config.make_config, from_dict (config.json)",
                   "subclass of genforge.config.TrainConfig; every field has a working default"),
    "MODELS": Hook("dict", REQUIRED, "config.make_config, `--set model=...`",
                   "family name -> (family Config dataclass, nn.Module class); Config.model is a key"),
    "build": Hook("function", REQUIRED, "trainer.fit, checkpoint.load_run", "fills cfg's data-dependent "
                  "fields before returning the model; works with run_dir=None", ("cfg",), ("run_dir",)),
    "batches": Hook("function", REQUIRED, "trainer.fit, the recipe's own evaluate",
                    "CPU tensors; train split infinite and deterministic in (seed, start_step)",
                    ("cfg", "split"), ("start_step", "model")),
    "evaluate": Hook("function", REQUIRED, "trainer.fit (as val_*), `genforge eval`",
                     "dict of metrics; cfg.metric without `val_` is one of its keys", ("model", "cfg", "split")),
    "loss": Hook("function", LOSS_OR_UPDATE, "trainer.fit (once per micro-batch)",
                 "{'loss': scalar tensor, other scalars to log}", ("model", "batch")),
    "optimizers": Hook("function", LOSS_OR_UPDATE, "trainer.fit (with update)",
                       "{name: torch optimizer}; each gets the configured schedule", ("model", "cfg")),
    "update": Hook("function", LOSS_OR_UPDATE, "trainer.fit (once per step)",
                   "does the whole step (zero_grad, backward, step); returns scalars to log",
                   ("model", "batch", "opts", "step", "cfg")),
    "UPDATE_ACCUMULATES": Hook("bool", OPTIONAL, "trainer.fit", "True: update honours grad_accum (each "
                               "train batch holds grad_accum micro-batches); else grad_accum > 1 is refused"),
    "NO_EMA": Hook("str", OPTIONAL, "trainer.fit", "why `ema` does not apply; ema > 0 is then refused"),
    "extra_state": Hook("function", OPTIONAL, "trainer.fit (each checkpoint)",
                        "tensors and plain values only (trainer_state.pt loads weights_only)", ("model", "cfg")),
    "load_extra_state": Hook("function", OPTIONAL, "trainer.fit (--resume)",
                             "restores what extra_state returned", ("model", "cfg", "state")),
    "SAVED_BEFORE": Hook("dict", OPTIONAL, "config.from_dict (config.json)",
                         "key -> the value a run saved before the key existed behaved with "
                         "(a missing key in an old config.json takes it, not today's default)"),
    "quantize_calibration": Hook("function", OPTIONAL, "checkpoint.load_run (--quantize)",
                                 "a function model -> forwards over representative input, for "
                                 "the int8 kernel's activation statistics (SmoothQuant)",
                                 ("cfg", "run_dir")),
    "QUANT_TOKEN_RANGE": Hook("str", OPTIONAL, "checkpoint.load_run (--quantize)",
                              "asym (default) or sym: how the int8 kernel scales each token's "
                              "activations (genforge/pretrained/quantize.py)"),
    "data_summary": Hook("function", OPTIONAL, "trainer.fit (before training)",
                         "lines saying what was read: rows/files, split sizes, classes with "
                         "counts, skipped files", ("cfg",)),
    "log_samples": Hook("function", OPTIONAL, "trainer.fit (each evaluation)",
                        "writes under run_dir/samples or plots; returns text to print or None",
                        ("model", "cfg", "run_dir", "step")),
    "TASK": Hook("str", OPTIONAL, "`genforge serve`", "one of " + ", ".join(TASK_HOOKS)
                 + "; the hooks that task needs are then required"),
    "capabilities": Hook("function", OPTIONAL, "`genforge serve`, `genforge explain`", "what the run can do "
                         "beyond TASK: values of genforge.recipes.CAPABILITIES", ("cfg",)),
    "tokenizer": Hook("function", OPTIONAL, "`genforge serve`",
                      "the run's tokenizer (encode/decode)", ("cfg", "run_dir")),
    "parse_label": Hook("function", OPTIONAL, "`genforge serve`",
                        "class name or index -> int; ConfigError when it names no class", ("cfg", "label")),
    "sample": Hook("function", OPTIONAL, "`genforge serve` (images), tests", "generates; image-generation: "
                   "accepts n, label, guidance, steps, seed", ("model", "cfg"), var_keywords=True),
    "classify": Hook("function", OPTIONAL, "`genforge serve`",
                     "one {label, probability, top} per input, in order", ("model", "cfg", "inputs"), ("top",)),
    "embed": Hook("function", OPTIONAL, "`genforge embed`, `genforge serve` (/v1/embeddings)",
                  "{'vectors': (N, D) float tensor in input order, 'tokens': int, 'truncated': int}; "
                  "inputs are texts or token-id lists", ("model", "cfg", "inputs"), ("batch_size",)),
    "predict": Hook("function", OPTIONAL, "`genforge predict`",
                    "one {input, label, probability, top} per input file", ("model", "cfg", "inputs"), ("top",)),
    "cli_generate": Hook("function", OPTIONAL, "`genforge generate`", "gets only the options the user gave",
                         ("model", "cfg", "run_dir"), var_keywords=True),
    "cli_play": Hook("function", OPTIONAL, "`genforge play`", "plays and prints each episode's return",
                     ("model", "cfg", "run_dir"), ("episodes", "gif")),
    "PRESETS": Hook("dict", OPTIONAL, "`genforge list`, any recipe-name argument",
                    "preset name -> (overrides dict, one-line description); names unique across recipes"),
    "TEST_CONFIG": Hook("dict", TEST_CONFIG_OR_CONFIGS, "tests/test_contract.py",
                        "overrides making a tiny fast config on small slices of real data"),
    "TEST_CONFIGS": Hook("dict", TEST_CONFIG_OR_CONFIGS, "tests/test_contract.py",
                         "name -> such overrides, one per family/variant"),
    "TEST_SAMPLE": Hook("dict", OPTIONAL, "tests/test_contract.py", "keyword arguments for sample"),
}


class RecipeError(TypeError):
    """A recipe module does not follow the contract; the message lists every problem."""


def _check_call(name: str, hook: Hook, fn, extra_keywords: tuple[str, ...] = ()) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []  # a builtin or C function: nothing to inspect
    probe = object()
    keywords = tuple(hook.keywords) + tuple(extra_keywords)
    want = hook.signature(name) if not extra_keywords else f"{name}(..., {', '.join(extra_keywords)})"
    # the call with every keyword, and the one without any: both must fit
    for kw in (keywords, ()):
        try:
            sig.bind(*[probe] * len(hook.args), **{k: probe for k in kw})
        except TypeError as e:
            return [f"{name}{sig} cannot be called as {want} ({e})"]
    return []


def recipe_problems(module: ModuleType) -> list[str]:
    """Every way `module` breaks the contract (empty when it follows it)."""
    from genforge.config import TrainConfig

    problems = []
    has = {n: hasattr(module, n) for n in HOOKS}
    task = getattr(module, "TASK", None)
    for name, hook in HOOKS.items():
        needed = hook.required == REQUIRED or name in TASK_HOOKS.get(task, ())
        if not has[name]:
            if needed:
                problems.append(f"{name} is missing ({hook.signature(name)}: {hook.guarantee})")
            continue
        value = getattr(module, name)
        if hook.kind == "function":
            if not callable(value):
                problems.append(f"{name} must be a function {hook.signature(name)}, not {type(value).__name__}")
                continue
            extra: tuple[str, ...] = ()
            if name == "sample":
                extra = tuple(getattr(module, "TEST_SAMPLE", {}))
                if task == "image-generation":
                    extra = IMAGE_SAMPLE_KEYWORDS + extra
            problems += _check_call(name, hook, value, extra)
        elif hook.kind == "dataclass":
            if not (isinstance(value, type) and dataclasses.is_dataclass(value) and issubclass(value, TrainConfig)):
                problems.append(f"{name} must be a dataclass subclassing genforge.config.TrainConfig")
        else:
            kind = {"dict": dict, "str": str, "bool": bool}[hook.kind]
            if not isinstance(value, kind):
                problems.append(f"{name} must be a {hook.kind}, not {type(value).__name__}")
    if has["update"] != has["optimizers"]:
        problems.append("update and optimizers come together: the trainer builds the optimisers "
                        "update receives from optimizers(model, cfg)")
    elif not has["loss"] and not has["update"]:
        problems.append("define loss(model, batch), or optimizers(model, cfg) + update(model, batch, opts, step, cfg)")
    if not has["TEST_CONFIG"] and not has["TEST_CONFIGS"]:
        problems.append("define TEST_CONFIG or TEST_CONFIGS: the contract test trains every recipe on them")
    if task is not None and task not in TASK_HOOKS:
        problems.append(f"TASK {task!r} is not one of: {', '.join(TASK_HOOKS)}")
    if has["extra_state"] != has["load_extra_state"]:
        problems.append("extra_state and load_extra_state come together (what is saved must be restored)")
    if has["UPDATE_ACCUMULATES"] and not has["update"]:
        problems.append("UPDATE_ACCUMULATES applies to recipes with their own update; loss recipes "
                        "always honour grad_accum")
    if isinstance(getattr(module, "MODELS", None), dict) and isinstance(getattr(module, "Config", None), type):
        default = getattr(module.Config, "model", None)
        if default not in module.MODELS:
            problems.append(f"Config.model default {default!r} is not a key of MODELS ({', '.join(module.MODELS)})")
    return problems


def check_recipe(module: ModuleType) -> None:
    """Raise RecipeError listing every way `module` breaks the recipe contract."""
    problems = recipe_problems(module)
    if problems:
        raise RecipeError(f"recipe {module.__name__} breaks the contract (docs/recipes.md):\n  "
                          + "\n  ".join(problems))


def required_text(name: str) -> str:
    """HOOKS[name].required, plus the TASKs that require it."""
    tasks = [t for t, names in TASK_HOOKS.items() if name in names]
    if tasks:
        return "required when TASK is " + " or ".join(tasks)
    return HOOKS[name].required


def markdown_table() -> str:
    """The table of docs/recipes.md ("Every hook"), generated from HOOKS."""
    rows = ["| name | required | signature / type | called by | guarantees |",
            "|---|---|---|---|---|"]
    for name, h in HOOKS.items():
        rows.append(f"| `{name}` | {required_text(name)} | `{h.signature(name)}` | {h.called_by} | {h.guarantee} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
