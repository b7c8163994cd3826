"""A seeded BERT-style encoder whose LayerNorm outputs carry a few large channels, as trained BERTs and LLMs do.

Pre-LN layers (LayerNorm -> attention -> residual, LayerNorm -> FFN -> residual) over
token and position embeddings. In each LayerNorm feeding a Linear, `OUTLIER_CHANNELS`
channels get a gain of `OUTLIER_GAIN`, and the rows of the Linears reading them are
divided by it: the function is what the plain weights compute, but the activations the
Linears read span a range ~`OUTLIER_GAIN` times wider than most channels use, the case
per-tensor activation scales handle badly and SmoothQuant targets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

OUTLIER_CHANNELS = (3, 17, 60)
OUTLIER_GAIN = 40.0
VOCAB = 512


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = (self._heads(f(x)) for f in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / float(hidden // self.heads) ** 0.5
        mixed = torch.softmax(scores, dim=-1) @ v
        return self.output(mixed.transpose(1, 2).reshape(batch, seq, hidden))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = t.shape
        return t.view(batch, seq, self.heads, hidden // self.heads).transpose(1, 2)


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = Attention(hidden, heads)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.intermediate = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.output = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.output(self.act(self.intermediate(self.ffn_norm(x))))


class Encoder(nn.Module):
    """Token ids [batch, seq] -> hidden states [batch, seq, hidden]."""

    def __init__(self, layers: int = 6, hidden: int = 128, heads: int = 4, ffn: int = 512, max_len: int = 64) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(VOCAB, hidden)
        self.positions = nn.Embedding(max_len, hidden)
        self.layer = nn.ModuleList(Layer(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.embeddings(input_ids) + self.positions(positions)
        for layer in self.layer:
            x = layer(x)
        return self.norm(x)


def build_encoder(seed: int = 0, **sizes) -> Encoder:
    """The encoder with seeded weights and outlier channels planted (module docstring)."""
    torch.manual_seed(seed)
    model = Encoder(**sizes).eval()
    with torch.no_grad():
        for layer in model.layer:
            for norm, readers in ((layer.attention_norm, (layer.attention.query, layer.attention.key,
                                                          layer.attention.value)),
                                  (layer.ffn_norm, (layer.intermediate,))):
                norm.weight.normal_(1.0, 0.1)
                norm.bias.normal_(0.0, 0.1)
                for channel in OUTLIER_CHANNELS:
                    norm.weight[channel] *= OUTLIER_GAIN
                    norm.bias[channel] *= OUTLIER_GAIN
                    for linear in readers:
                        linear.weight[:, channel] /= OUTLIER_GAIN
    return model


def token_batches(count: int, seed: int, *, seq: int = 32, batch: int = 1,
                  lengths: tuple[int, int] | None = None) -> list[dict[str, np.ndarray]]:
    """`count` feeds of random token ids; with `lengths` each feed's sequence length is drawn from that range."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        length = int(rng.integers(*lengths)) if lengths else seq
        feeds.append({"input_ids": rng.integers(0, VOCAB, (batch, length), dtype=np.int64)})
    return feeds
