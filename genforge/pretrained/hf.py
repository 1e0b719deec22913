"""Import a Hugging Face model folder (config.json, *.safetensors, tokenizer.json,
tokenizer_config.json), or a Hub repo id downloaded to one with `huggingface_hub`."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from genforge.pretrained.convert import PretrainedError, config_from_hf, state_from_hf


def download(repo_id: str) -> Path:
    """A Hub repo id -> the local folder of its snapshot (only the files an import reads)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PretrainedError(f"{repo_id!r} is not a file or folder here; to download it from the "
                              "Hugging Face Hub, `pip install huggingface_hub`") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[
            "config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]))
    except Exception as e:  # network, auth, unknown repo: one message, not a traceback
        raise PretrainedError(f"cannot download {repo_id!r} from the Hugging Face Hub "
                              f"({type(e).__name__}: {e})") from None


def load_folder(folder: str | Path):
    """-> (LlamaConfig, genforge state dict, tokenizer.json text, tokenizer_config dict)."""
    from safetensors import safe_open

    folder = Path(folder)
    where = str(folder)
    if not (folder / "config.json").is_file():
        raise PretrainedError(f"{where} has no config.json; pass a Hugging Face model folder "
                              "(config.json, *.safetensors, tokenizer.json) or a .gguf file")
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()), f"{where}/config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        other = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        raise PretrainedError(f"{where} has no *.safetensors weights"
                              + (f" (found {', '.join(other)}: pickled weights are not read; "
                                 "save them as safetensors)" if other else ""))
    if not (folder / "tokenizer.json").is_file():
        raise PretrainedError(f"{where} has no tokenizer.json; save the tokenizer into the folder "
                              "(tokenizer.save_pretrained(folder)) or import the GGUF file instead")
    owner: dict[str, Path] = {}  # tensor name -> shard holding it
    for f in files:
        with safe_open(str(f), framework="pt") as s:
            for name in s.keys():
                owner[name] = f
    handles = {}

    def get(name: str) -> torch.Tensor:
        f = owner[name]
        if f not in handles:
            handles[f] = safe_open(str(f), framework="pt")
        return handles[f].get_tensor(name).float()

    state = state_from_hf(set(owner), get, cfg, where)
    tok_config = {}
    if (folder / "tokenizer_config.json").is_file():
        tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    # transformers >= 4.47 keeps the chat template in its own file
    if not tok_config.get("chat_template") and (folder / "chat_template.jinja").is_file():
        tok_config["chat_template"] = (folder / "chat_template.jinja").read_text()
    return cfg, state, (folder / "tokenizer.json").read_text(encoding="utf-8"), tok_config
