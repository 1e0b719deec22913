"""Importers of real pretrained weights into genforge runs: a GGUF file, a Hugging Face
model folder, or a Hub repo id. `import_run(SOURCE, OUT)` writes an ordinary
`language-model` run (config.json with `model: "llama"`, model.safetensors, tokenizer.json,
tokenizer_config.json with the chat template) that `generate`, `eval`, `serve` and
`train --set init_from=` use like any trained run."""
from genforge.pretrained.convert import PretrainedError
from genforge.pretrained.run import import_run, load_source

__all__ = ["PretrainedError", "import_run", "load_source"]
