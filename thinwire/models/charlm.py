"""A small character-level language model: a causal (decoder-only) transformer, about 1.0M
parameters at the default size (5 pre-norm layers, width 128, 4 heads, feed-forward 512, learned
positions, vocabulary = the data set's classes).

Input: a window of character ids (float or integer, shape (N, T)). Output: next-character logits
shaped (N, vocab, T), position t predicting character t+1. That is torch's layout for a loss
over positions, so `F.cross_entropy(model(x), y)` with next-character labels y of shape (N, T)
trains it unchanged in every engine, and `thinwire.training.evaluate` reports next-character
accuracy (argmax over dim 1, averaged over all N*T positions).
"""
from __future__ import annotations

import torch
from torch import nn

from thinwire.errors import ConfigError


class CharTransformer(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, width: int = 128, layers: int = 5,
                 heads: int = 4, ff: int = 512):
        super().__init__()
        if len(input_shape) != 1 or num_classes < 2:
            raise ConfigError("model", f"charlm needs character windows (T,) and a vocabulary, got shape "
                              f"{tuple(input_shape)} with {num_classes} classes", "a text data set (stdlib-text)")
        self.seq_len, self.vocab = int(input_shape[0]), int(num_classes)
        self.embed = nn.Embedding(self.vocab, width)
        self.pos = nn.Parameter(torch.zeros(self.seq_len, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(self.seq_len),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long().clamp_(0, self.vocab - 1)
        t = ids.shape[1]
        h = self.embed(ids) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h)).transpose(1, 2)
