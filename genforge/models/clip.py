"""Contrastive image-text pre-training (CLIP, Radford et al. 2021) at laptop scale.

An image tower (a small CNN, global average pooled) and a text tower -- a small Transformer
over bytes trained from scratch, or a BERT-family encoder (bert.py, e.g. the pretrained
MiniLM, locked or tuned) -- each followed by a linear projection into one embedding space.
The loss is CLIP's symmetric InfoNCE: for a batch of N matching (image, text) pairs, the
N x N cosine similarities scaled by a learned temperature are logits; row i's target is
column i (image -> text) and column i's target is row i (text -> image), and the two cross
entropies are averaged. The temperature is learned as log(1/tau), initialised to
log(1/0.07) and clamped to at most log(100), as in the paper (section 2.5).

When the text tower does not train (every parameter frozen), text embeddings are memoised
by token sequence: captions repeat, and a locked 22M-parameter encoder would otherwise
dominate the step time.

`recall_at_k` is the retrieval metric the recipe reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.models.attention import MultiHeadAttention
from genforge.models.bert import Bert, BertConfig, pool
from genforge.models.layers import Dropout, conv_stage

# ---------------------------------------------------------------------------------------
# the loss and the retrieval metric


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised embeddings (N, D), pairs on the diagonal."""
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (N, N): images x texts
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def recall_at_k(sim: torch.Tensor, targets: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """sim (Q, G): query x gallery similarities; targets (Q, G) bool, True where a gallery
    item matches the query. Recall@k: the fraction of queries with a match among their k
    most similar items (ties broken by gallery order)."""
    order = sim.argsort(dim=1, descending=True, stable=True)  # (Q, G)
    hit = torch.gather(targets, 1, order)  # (Q, G): match at rank r
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((len(sim),), sim.shape[1]))
    return {k: float((first < k).float().mean()) for k in ks}


# ---------------------------------------------------------------------------------------
# towers


class ImageTower(nn.Module):
    """conv-BN-ReLU (pool between stages) -> global average pool -> (B, last channels)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, out in enumerate(channels):
            layers += conv_stage(c, out, nn.ReLU(), pool=nn.MaxPool2d(2) if i < len(channels) - 1 else None)
            c = out
        self.net = nn.Sequential(*layers)
        self.width = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((2, 3))  # (B, C)


class TextBlock(nn.Module):
    """Pre-LN Transformer encoder block (bidirectional self-attention + GELU MLP)."""

    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d, n_head, bias=True, dropout=dropout)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), Dropout(dropout))

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), key_padding_mask=mask)
        return x + self.mlp(self.ln2(x))


class TextTransformer(nn.Module):
    """token ids (B, T) -> mean of the final states over the real tokens (B, d)."""

    def __init__(self, vocab: int, max_len: int, d: int, n_layer: int, n_head: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.blocks = nn.ModuleList(TextBlock(d, n_head, dropout) for _ in range(n_layer))
        self.ln = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.tok(tokens) + self.pos[:T]  # (B, T, d)
        for b in self.blocks:
            x = b(x, mask)
        return pool(self.ln(x), mask, "mean")


# ---------------------------------------------------------------------------------------
# config and model


@dataclass
class CLIPConfig:
    embed_dim: int = 128  # the shared embedding space
    image_channels: tuple[int, ...] = (32, 64, 128)  # one conv stage each, 2x2 max-pool between
    in_channels: int = 1  # filled from the data
    # the text tower: transformer (bytes, from scratch) | bert (a BERT-family encoder: train
    # with init_from=minilm (its architecture and tokenizer are adopted) and freeze=bert to lock it)
    text: str = "transformer"
    text_vocab: int = 258  # transformer: bytes + 1, and the padding id 0
    text_len: int = 64  # transformer: positions (longer captions are cut)
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    dropout: float = 0.0
    init_temperature: float = 0.07  # CLIP's initial tau
    max_logit_scale: float = 100.0  # 1/tau is clamped here (CLIP section 2.5)
    pad_id: int = 0
    # text=bert: the encoder's shape (adopted from init_from by the recipe)
    bert_vocab_size: int = 30522
    bert_max_len: int = 512
    bert_n_layer: int = 6
    bert_n_head: int = 12
    bert_d_model: int = 384
    bert_intermediate: int = 1536


def bert_config(cfg: CLIPConfig) -> BertConfig:
    return BertConfig(vocab_size=cfg.bert_vocab_size, max_len=cfg.bert_max_len,
                      n_layer=cfg.bert_n_layer, n_head=cfg.bert_n_head, d_model=cfg.bert_d_model,
                      intermediate=cfg.bert_intermediate, dropout=cfg.dropout, pad_id=cfg.pad_id)


TEXT_TOWERS = ("transformer", "bert")


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        if cfg.text not in TEXT_TOWERS:
            raise ValueError(f"unknown text tower {cfg.text!r}; choose one of {', '.join(TEXT_TOWERS)}")
        self.cfg = cfg
        self.image = ImageTower(cfg.in_channels, tuple(cfg.image_channels))
        if cfg.text == "bert":
            # top-level `bert.` as in a text-embed run, so init_from copies it by name
            self.bert = Bert(bert_config(cfg))
            width = cfg.bert_d_model
        else:
            self.text = TextTransformer(cfg.text_vocab, cfg.text_len, cfg.text_width,
                                        cfg.text_layers, cfg.text_heads, cfg.dropout)
            width = cfg.text_width
        self.image_proj = nn.Linear(self.image.width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self._text_memo: dict[bytes, torch.Tensor] = {}

    # -- towers ----------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) -> unit vectors (B, embed_dim)."""
        return F.normalize(self.image_proj(self.image(images)), dim=-1)

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != self.cfg.pad_id
        if self.cfg.text == "bert":
            return pool(self.bert(tokens, mask), mask, "mean")
        return self.text(tokens[:, : self.cfg.text_len], mask[:, : self.cfg.text_len])

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """token ids (B, T) -> the text tower's pooled output (B, width), memoised per row
        while the tower is frozen (its outputs cannot change then)."""
        tower = self.bert if self.cfg.text == "bert" else self.text
        if any(p.requires_grad for p in tower.parameters()) or (tower.training and self.cfg.dropout > 0):
            self._text_memo.clear()
            return self._text_features(tokens)
        keys = [row[row != self.cfg.pad_id].cpu().numpy().tobytes() for row in tokens]
        todo = [i for i, k in enumerate(keys) if k not in self._text_memo]
        if todo:
            with torch.no_grad():
                sub = tokens[todo]
                sub = sub[:, : max(1, int((sub != self.cfg.pad_id).sum(1).max()))]
                feats = self._text_features(sub)
            for i, f in zip(todo, feats):
                self._text_memo[keys[i]] = f
        return torch.stack([self._text_memo[k] for k in keys])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """token ids (B, T), 0 = padding -> unit vectors (B, embed_dim)."""
        return F.normalize(self.text_proj(self.text_features(tokens)), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0, math.log(self.cfg.max_logit_scale))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict:
        img, txt = self.encode_image(images), self.encode_text(tokens)
        scale = self.scale()
        loss = clip_loss(img, txt, scale)
        with torch.no_grad():
            acc = ((img @ txt.T).argmax(1) == torch.arange(len(img), device=img.device)).float().mean()
        return {"loss": loss, "pair_accuracy": acc, "temperature": (-scale).exp().detach()}

    def _apply(self, fn, *args, **kwargs):
        self._text_memo.clear()  # a device or dtype move invalidates the memo
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self._text_memo.clear()
        return super().load_state_dict(*args, **kwargs)
