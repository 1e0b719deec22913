"""Generation shared by model families: text sampling (temperature, top-k, top-p, repetition penalty, stop strings, streaming) over a KV cache or carried hidden state."""
