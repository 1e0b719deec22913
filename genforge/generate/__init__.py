"""Generation shared by model families: text sampling with a KV cache or carried hidden
state (sampling.py), image sampling grids (images.py)."""
