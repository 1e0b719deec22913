"""Model families: pure torch, one family per file, each a Config dataclass + nn.Module(s)."""
