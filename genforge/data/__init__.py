"""Datasets by name, file formats, tokenizers."""
from genforge.data.registry import DATASETS, DataError, find

__all__ = ["DATASETS", "DataError", "find"]
