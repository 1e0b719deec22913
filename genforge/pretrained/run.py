"""Write an imported checkpoint as an ordinary `language-model` run directory.

Everything is written into a hidden temporary folder beside OUT and renamed to OUT at the
end, so a failed import (bad file, full disk, Ctrl-C) never leaves a half-written run."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from genforge.pretrained.convert import PretrainedError, build_llama

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_source(source: str | Path):
    """A .gguf file, a Hugging Face folder or a Hub repo id -> (LlamaConfig, state dict,
    tokenizer.json text, tokenizer_config dict)."""
    path = Path(source)
    if path.is_dir():
        from genforge.pretrained.hf import load_folder

        return load_folder(path)
    if path.is_file():
        from genforge.pretrained.gguf_file import load_gguf

        cfg, state, tok, tok_config = load_gguf(path)
        return cfg, state, tok.to_str(), tok_config
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/")) and not text.endswith(".gguf"):
        from genforge.pretrained.hf import download, load_folder

        return load_folder(download(text))
    raise PretrainedError(f"{source}: no such file or folder (pass a .gguf file, a Hugging Face "
                          "model folder, or a Hub repo id such as HuggingFaceTB/SmolLM2-135M-Instruct)")


def import_run(source: str | Path, out: str | Path, dtype: str = "float32",
               log=print) -> Path:
    """Import `source` into the new run directory `out`; returns `out`.

    dtype: how the weights are stored (bfloat16/float16 halve the file); the model runs in
    the run's usual precision when loaded."""
    from genforge import config as C
    from genforge.recipes import get_recipe
    from genforge.train.checkpoint import save_config, save_weights

    from genforge.pretrained import bert
    from genforge.pretrained.sources import NAMED, packaged_path

    if dtype not in DTYPES:
        raise PretrainedError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    out = Path(out)
    check_out(out)
    if str(source) in NAMED:  # a packaged model by name: `genforge import minilm|smollm2`
        source = packaged_path(str(source))
    if Path(source).is_dir() and bert.is_bert_folder(Path(source)):
        return bert.import_bert(source, out, DTYPES[dtype], log)
    cfg, state, tok_json, tok_config = load_source(source)
    model = build_llama(cfg, state).to(DTYPES[dtype])
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{source}: {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head}/{cfg.n_kv_head} "
        f"query/kv heads, vocabulary {cfg.vocab_size}, context {cfg.block_size}, "
        f"{n_params / 1e6:.1f}M parameters")

    recipe = get_recipe("language-model")
    run_cfg = C.make_config(recipe, {"model": "llama", "tokenizer": "pretrained"})
    run_cfg.model_cfg = cfg

    def write(tmp: Path) -> None:
        (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n",
                                                   encoding="utf-8")
        save_weights(model, tmp / "model.safetensors")
        (tmp / "source.json").write_text(json.dumps({"source": str(source), "dtype": dtype}) + "\n")
        save_config(tmp, "language-model", run_cfg)  # last: a folder with config.json is a run

    return write_run(out, write)


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PretrainedError(f"{out} already exists and is not empty; choose another --out "
                              "(nothing was overwritten)")


def write_run(out: Path, write) -> Path:
    """`write(tmp)` fills a hidden temporary folder beside `out`, which is then renamed to
    `out` (empty or absent): a failed import leaves nothing behind."""
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.importing-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the run private, unlike trained runs
    try:
        write(tmp)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
