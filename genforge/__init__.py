"""genforge: train, evaluate, explain, generate with and serve deep-learning models."""
__version__ = "0.1.0"
