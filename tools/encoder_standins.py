"""Stand-ins for trained BERT-style sentence encoders: Hugging Face's graph, untrained weights, trained-looking activations.

Quantization error depends on what the activations look like, and random weights look
nothing like a trained encoder's. These models are written as Hugging Face's BertModel
is (the same modules, names and arithmetic, no `transformers` needed), exported as people
export them, and seeded so their activations carry what trained encoders carry.

1. The graph. Inputs input_ids, attention_mask, token_type_ids ([batch, sequence], int64,
   both axes dynamic). Word + position + token-type embeddings, position ids sliced from a
   buffer by the sequence length, then LayerNorm; the extended mask built in-graph as
   BertModel does, (1 - mask[:, None, None, :]) * finfo(float32).min; post-LN layers
   (self-attention with heads split by view(x.size()[:-1] + (heads, head_dim)), output
   dense + residual + LayerNorm, exact Erf GELU FFN + residual + LayerNorm). Outputs
   last_hidden_state [batch, sequence, hidden] and sentence_embedding [batch, hidden], the
   masked mean over tokens as sentence-transformers' mean pooling computes it
   (sum(x * mask) / clamp(sum(mask), 1e-9)).
2. Sizes (SIZES): "minilm" (6 layers, hidden 384, 12 heads, FFN 1536, as
   all-MiniLM-L6-v2), "bert-base" (12, 768, 12, 3072) and "tiny" (2, 128, 4, 512) for quick
   runs; all with BERT's uncased vocabulary size 30522, 512 positions, 2 token types.
3. Export: the classic TorchScript exporter (`dynamo=False`, opset 17, dynamic_axes) or
   the dynamo exporter (`dynamo=True`, dynamic_shapes with torch.export.Dim; it builds
   opset 18 and converts down to 17), weights inline.
4. Weights under golden_models.deterministic() (seed 0): embeddings N(0, 0.02) as BERT
   initializes them; Linear weights N(0, 1/fan_in) (query and key x1.5, for attention
   patterns sharper than uniform); small random biases; LayerNorm gains N(0.9, 0.08) and
   shifts N(0, 0.05). Then, channel choices from numpy's generator seeded MODEL_SEED,
   the following are planted; the sizes of a and b are set from measurements of the
   torch model on sentences of FIT_SEED (neither calibration's nor evaluation's), as
   training would fit them:
   a. Massive activations (Sun et al. 2024; BERT's dims 308 and 381). MASSIVE channels
      (308 and 381 modulo the width) hold a constant of -MASSIVE_RATIO[0] and
      +MASSIVE_RATIO[1] times the median |activation| (measured) on every token in every
      LayerNorm output from the second layer's output on (the first's in a tiny model,
      Config.massive_from): the residual stream of a post-LN encoder. In a post-LN model a constant that reached the sums LayerNorm normalizes
      would take over their variance and squash every other channel, so the LayerNorms'
      shifts write it and each sublayer's output projection (attention output dense, FFN
      output dense) subtracts it again through its bias: those projections' outputs carry
      the massive constant with the opposite sign, as trained BERTs' FFN outputs do
      (Bondarenko et al. 2021). The Linears reading these channels weigh them x0.01, so
      the constant acts as the small bias it is in trained models. The last layer's output
      keeps only RESIDUAL_RATIO times the median (massive activations fade in the last
      layers; "rogue dimensions" of sentence embeddings stay).
   b. Attention sink on the first token ([CLS]). In SINK_SHARE of each layer's heads the
      query bias is SINK_QUERY times a random unit direction u (the query weights lose
      their component along u, so every query has the same one), and the key weights get
      a rank-1 update u z^T, z the unit direction from the other tokens' mean input to
      [CLS]'s (measured layer by layer, the earlier layers' sinks in place), scaled so the
      first key's logit leads by U(SINK_LEAD) on average: those heads put most of their
      probability on [CLS], like trained BERTs' no-op heads (Clark et al. 2019). The
      update is spread over a whole head's key weights, so no single weight stands out.
   c. Long-tailed GELU. In every FFN, TAIL_SHARE of the intermediate channels (at least
      2) get their input weights and bias x U(TAIL_GAIN) plus TAIL_SHIFT x that gain as
      bias, and the output dense divides their columns back: a few channels reach 10-20
      where most stay below 3, their weight rows some 15 standard deviations at most.
   d. LayerNorm weights with outlier channels. The attention-output LayerNorm of every
      layer multiplies LN_OUTLIER_GAINS into three channels, the FFN input weights divide
      them back and the layer's output LayerNorm divides its gains there by the same
      factor, so the FFN sees outlier input channels (the SmoothQuant case) without the
      outliers compounding layer after layer.
5. Sentences (`sentences`): [CLS] words [SEP] with word ids Zipf-Mandelbrot distributed
   over BERT's word pieces (id 1996 on, rank r with weight (r + 2.7)^-1.1, the vocabulary
   being roughly in frequency order), commas and a final period, lengths 8-64 tokens
   (log-normal, median 18), a quarter of them sentence pairs ([SEP] between, token type 1
   on the second); the set is padded to its longest row with id 0 and mask 0 and stored
   stacked as .npz (one sample per row; tools/bench.py feeds rows at batch 1).
   Calibration and evaluation draw from CALIB_SEED and EVAL_SEED.
6. `measure` runs the exported float model in ONNX Runtime with every LayerNorm,
   Softmax and FFN-output MatMul input added as outputs and reports each property on the
   real (mask 1) tokens: massive-channel magnitude over the median |activation| of each
   LayerNorm output, the share of heads whose mean probability on the first key is over
   0.5, the GELU channels' max over the median channel's, the LayerNorm gain outliers,
   and, to read cosine figures by, the mean cosine between different sentences'
   embeddings (untrained encoders' embeddings are anisotropic, as raw BERT's are);
   `check` holds the figures to REQUIREMENTS.

    python tools/encoder_standins.py [--sizes tiny minilm bert-base] [--exporter classic|dynamo] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from bench_models import Case, _write_atomic
from golden_models import CALIB_SEED, EVAL_SEED, FIT_SEED, MODEL_SEED, OPSET, deterministic
from torch import nn

from qcompiler.passes.infra.progress import silenced

VOCAB = 30522
PAD, CLS, SEP, COMMA, PERIOD, FIRST_WORD = 0, 101, 102, 1010, 1012, 1996
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "sentence_embedding")
EXPORTERS = ("classic", "dynamo")

MASSIVE = (308, 381)
MASSIVE_RATIO = (100.0, 70.0)  # signs -, +
RESIDUAL_RATIO = 10.0
SINK_SHARE = 0.75
SINK_LEAD = (5.0, 9.0)
SINK_QUERY = 4.0
TAIL_SHARE = 1 / 256
TAIL_GAIN = (3.0, 4.0)
TAIL_SHIFT = 1.5
LN_OUTLIER_GAINS = (6.0, 10.0, 15.0)
FIT_SENTENCES = 32

# What `check` holds a stand-in to (figures of `measure`)
REQUIREMENTS = {
    "massive_min_ratio": (50.0, None),      # weakest massive channel, weakest token, every residual LayerNorm from MASSIVE_FROM
    "massive_max_ratio": (None, 200.0),     # and the strongest
    "massive_channels": (1, 3),             # channels above 20x the median on 99% of tokens there
    "sink_head_share": (0.5, None),         # heads whose mean probability on the first token is over 0.5
    "gelu_tail_ratio": (5.0, None),         # largest channel's max |GELU| over the median channel's, worst FFN
    "ln_weight_outlier_ratio": (5.0, None),  # max |gain| over the median |gain|, attention-output LayerNorms
}


@dataclass(frozen=True)
class Config:
    """An encoder's shape."""

    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = VOCAB
    max_positions: int = 512
    type_vocab: int = 2

    @property
    def massive_from(self) -> int:
        """The layer whose output first carries the massive activations: the second, or the first of a tiny model."""
        return 1 if self.layers >= 4 else 0


SIZES = {
    "tiny": Config("tiny", 2, 128, 4, 512),
    "minilm": Config("minilm", 6, 384, 12, 1536),
    "bert-base": Config("bert-base", 12, 768, 12, 3072),
}


# -- the model, written as Hugging Face's BertModel -------------------------------------------


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab, cfg.hidden, padding_idx=PAD)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions).expand((1, -1)), persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        seq_length = input_ids.size()[1]
        position_ids = self.position_ids[:, :seq_length]
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.LayerNorm(embeddings)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.num_attention_heads = cfg.heads
        self.attention_head_size = cfg.hidden // cfg.heads
        self.all_head_size = cfg.hidden
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_x_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_scores = attention_scores + attention_mask
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        context_layer = torch.matmul(attention_probs, value_layer).permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        return context_layer.view(new_context_layer_shape)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states) + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden_states, attention_mask), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.ffn)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(hidden_states))  # exact (Erf) GELU, BERT's "gelu"


class BertOutput(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.ffn, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states) + input_tensor)


class BertLayer(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.layers))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask)
        return hidden_states


class SentenceEncoder(nn.Module):
    """BertModel (no pooler) followed by sentence-transformers' mean pooling."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float32
        extended_attention_mask = attention_mask[:, None, None, :].to(dtype=dtype)
        extended_attention_mask = (1.0 - extended_attention_mask) * torch.finfo(dtype).min
        embedding_output = self.embeddings(input_ids, token_type_ids)
        last_hidden_state = self.encoder(embedding_output, extended_attention_mask)
        input_mask_expanded = attention_mask.unsqueeze(-1).expand(last_hidden_state.size()).to(dtype)
        summed = torch.sum(last_hidden_state * input_mask_expanded, 1)
        sentence_embedding = summed / torch.clamp(input_mask_expanded.sum(1), min=1e-9)
        return last_hidden_state, sentence_embedding

    def norms(self) -> list[nn.LayerNorm]:
        """Every LayerNorm in graph order: the embeddings', then each layer's attention-output and output ones."""
        found = [self.embeddings.LayerNorm]
        for layer in self.encoder.layer:
            found += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
        return found


# -- the planted activations (module docstring, rule 4) ---------------------------------------


@dataclass(frozen=True)
class Plan:
    """The channels and heads rule 4 plants into, drawn once per size."""

    massive: tuple[int, ...]
    outliers: tuple[int, ...]
    tails: tuple[tuple[int, ...], ...]     # per layer: intermediate channels with the long tail
    sink_heads: tuple[tuple[int, ...], ...]  # per layer
    sink_lead: tuple[tuple[float, ...], ...]  # per layer and sink head: the first key's logit lead

    @classmethod
    def draw(cls, cfg: Config) -> Plan:
        rng = np.random.default_rng(MODEL_SEED)
        massive = tuple(c % cfg.hidden for c in MASSIVE)
        free = [c for c in rng.permutation(cfg.hidden).tolist() if c not in massive]
        outliers = tuple(free[:len(LN_OUTLIER_GAINS)])
        count = max(2, round(cfg.ffn * TAIL_SHARE))
        tails = [tuple(rng.permutation(cfg.ffn)[:count].tolist()) for _ in range(cfg.layers)]
        heads = max(1, round(cfg.heads * SINK_SHARE))
        sink_heads = tuple(tuple(sorted(rng.permutation(cfg.heads)[:heads].tolist())) for _ in range(cfg.layers))
        lead = tuple(tuple(rng.uniform(*SINK_LEAD, heads).tolist()) for _ in range(cfg.layers))
        return cls(massive, outliers, tuple(tails), sink_heads, lead)


def build(cfg: Config) -> SentenceEncoder:
    """The seeded stand-in of this size, every property of rule 4 planted and fitted."""
    plan = Plan.draw(cfg)
    with deterministic(), torch.no_grad():
        model = SentenceEncoder(cfg).eval()
        _init(model)
        _plant(model, cfg, plan)
        fit = {k: torch.from_numpy(v) for k, v in sentences(FIT_SENTENCES, FIT_SEED, cfg).items()}
        _fit_massive(model, cfg, plan, fit)
        _fit_sink(model, plan, fit)
        _fit_massive(model, cfg, plan, fit)  # the sink heads moved the medians a little
    return model


def _init(model: SentenceEncoder) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, 0.02)
        elif isinstance(module, nn.Linear):
            scale = 1.5 if name.endswith(("query", "key")) else 1.0
            module.weight.normal_(0.0, scale * module.in_features**-0.5)
            module.bias.normal_(0.0, 0.02)
        elif isinstance(module, nn.LayerNorm):
            module.weight.normal_(0.9, 0.08)
            module.bias.normal_(0.0, 0.05)


def _readers(layer: BertLayer) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """The Linears reading the layer's input, and those reading its attention-output LayerNorm."""
    attention = layer.attention.self
    return [attention.query, attention.key, attention.value], [layer.intermediate.dense]


def _plant(model: SentenceEncoder, cfg: Config, plan: Plan) -> None:
    """Rules 4a-4d's fixed parts: reader scales, the sink heads' queries, GELU tails, LayerNorm outlier gains."""
    massive = list(plan.massive)
    for norm in model.norms():
        norm.weight[massive], norm.bias[massive] = 1.0, 0.0
    for index, layer in enumerate(model.encoder.layer):
        of_input, of_middle = _readers(layer)
        for linear in of_input + of_middle:
            linear.weight[:, massive] *= 0.01
        for writer in (layer.attention.output.dense, layer.output.dense):
            writer.bias[massive] = 0.0
        up, down = layer.intermediate.dense, layer.output.dense
        # 4b: query biases pointing along each sink head's direction (the keys follow in _fit_sink)
        head_dim = cfg.hidden // cfg.heads
        query = layer.attention.self.query
        for head in plan.sink_heads[index]:
            rows, u = slice(head * head_dim, (head + 1) * head_dim), _direction(index, head, head_dim)
            query.weight[rows] -= torch.outer(u, u @ query.weight[rows])  # queries vary only across u
            query.bias[rows] = SINK_QUERY * u
        # 4c: long-tailed GELU channels
        gains = torch.empty(len(plan.tails[index])).uniform_(*TAIL_GAIN)
        for channel, gain in zip(plan.tails[index], gains.tolist()):
            up.weight[channel, :] *= gain
            up.bias[channel] = up.bias[channel] * gain + TAIL_SHIFT * gain
            down.weight[:, channel] /= gain
        # 4d: LayerNorm gains with outlier channels, undone by the FFN's input and the layer's output LayerNorm
        for channel, gain in zip(plan.outliers, LN_OUTLIER_GAINS):
            layer.attention.output.LayerNorm.weight[channel] *= gain
            layer.intermediate.dense.weight[:, channel] /= gain
            layer.output.LayerNorm.weight[channel] /= gain


def _direction(layer: int, head: int, size: int) -> torch.Tensor:
    """A fixed random unit vector per (layer, head), independent of torch's generator state."""
    rng = np.random.default_rng([MODEL_SEED, layer, head])
    vector = rng.standard_normal(size)
    return torch.from_numpy(vector / np.linalg.norm(vector)).float()


def _trace(model: SentenceEncoder, feed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Every LayerNorm's output, in graph order, for the feed."""
    seen: list[torch.Tensor] = []
    hooks = [norm.register_forward_hook(lambda m, i, o: seen.append(o)) for norm in model.norms()]
    try:
        model(*(feed[k] for k in INPUTS))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _fit_sink(model: SentenceEncoder, plan: Plan, fit: dict[str, torch.Tensor]) -> None:
    """4b: per layer, in order, a rank-1 key update giving each sink head's first key its planned logit lead."""
    later = fit["attention_mask"].bool()
    later[:, 0] = False
    head_dim = model.config.hidden // model.config.heads
    for index, layer in enumerate(model.encoder.layer):
        x = _trace(model, fit)[2 * index]  # the layer's input, with the earlier layers' sinks in place
        first, rest = x[:, 0], x[later]
        z = first.mean(0) - rest.mean(0)
        z /= z.norm()
        gap = float((first @ z).mean() - (rest @ z).mean())
        key = layer.attention.self.key
        for head, lead in zip(plan.sink_heads[index], plan.sink_lead[index]):
            rows = slice(head * head_dim, (head + 1) * head_dim)
            # the lead = SINK_QUERY * (weight along u) * gap / sqrt(head_dim)
            weight = lead * head_dim**0.5 / (SINK_QUERY * gap)
            key.weight[rows] += weight * torch.outer(_direction(index, head, head_dim), z)


def _fit_massive(model: SentenceEncoder, cfg: Config, plan: Plan, fit: dict[str, torch.Tensor]) -> None:
    """4a: each residual LayerNorm's shift writes +-ratio x its median |output|; the next sublayer takes it back."""
    norms = _trace(model, fit)
    real = fit["attention_mask"].bool()
    skip = {*plan.massive, *plan.outliers}
    keep = [c for c in range(cfg.hidden) if c not in skip]
    signs = torch.tensor([-1.0, 1.0, -1.0][:len(plan.massive)])
    first = 2 * cfg.massive_from + 2  # the LayerNorm ending layer massive_from
    layers = model.encoder.layer
    for j, norm in enumerate(model.norms()):
        if j < first:
            continue
        ratios = torch.tensor(MASSIVE_RATIO) if j < len(norms) - 1 else torch.full((len(plan.massive),), RESIDUAL_RATIO)
        median = float(norms[j][real][:, keep].abs().median())
        norm.bias[list(plan.massive)] = signs * ratios * median
        if j < len(norms) - 1:  # the sublayer after LayerNorm j adds its output to it: subtract the constant there
            layer = layers[j // 2]
            writer = layer.attention.output.dense if j % 2 == 0 else layer.output.dense
            writer.bias[list(plan.massive)] = -norm.bias[list(plan.massive)]


# -- sentences ---------------------------------------------------------------------------------


def sentences(count: int, seed: int, cfg: Config) -> dict[str, np.ndarray]:
    """`count` tokenized sentences (rule 5), padded to the longest: input_ids, attention_mask, token_type_ids."""
    rng = np.random.default_rng(seed)
    words = cfg.vocab - FIRST_WORD
    weights = (np.arange(words) + 2.7) ** -1.1
    weights /= weights.sum()
    rows: list[tuple[list[int], list[int]]] = []
    for _ in range(count):
        length = int(np.clip(round(rng.lognormal(math.log(18), 0.5)), 8, 64))
        pair = length >= 12 and rng.random() < 0.25
        segments = [length - 3 - (split := int(rng.integers(3, length - 6))), split] if pair else [length - 2]
        ids, types = [CLS], [0]
        for kind, size in enumerate(segments):
            text = (FIRST_WORD + rng.choice(words, size, p=weights)).tolist()
            for k in range(2, size - 1):
                if rng.random() < 0.06:
                    text[k] = COMMA
            if size > 2 and rng.random() < 0.8:
                text[-1] = PERIOD
            ids += text + [SEP]
            types += [kind] * (size + 1)
        rows.append((ids, types))
    longest = max(len(ids) for ids, _ in rows)
    out = {k: np.zeros((count, longest), np.int64) for k in INPUTS}
    for i, (ids, types) in enumerate(rows):
        out["input_ids"][i, :len(ids)] = ids
        out["attention_mask"][i, :len(ids)] = 1
        out["token_type_ids"][i, :len(ids)] = types
    return out


# -- export ------------------------------------------------------------------------------------


def export(model: SentenceEncoder, exporter: str = "classic") -> onnx.ModelProto:
    """The model as ONNX (rule 3); batch and sequence dynamic on every input and output."""
    example = tuple(torch.from_numpy(v) for v in sentences(2, EVAL_SEED, model.config).values())
    with silenced("torch.onnx", "onnxscript"), torch.no_grad():
        if exporter == "classic":
            axes = {k: {0: "batch", 1: "sequence"} for k in (*INPUTS, OUTPUTS[0])} | {OUTPUTS[1]: {0: "batch"}}
            buffer = io.BytesIO()
            torch.onnx.export(model, example, buffer, dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                              output_names=list(OUTPUTS), dynamic_axes=axes)
            return onnx.load_from_string(buffer.getvalue())
        if exporter == "dynamo":
            batch, sequence = torch.export.Dim("batch", max=4096), torch.export.Dim("sequence", max=model.config.max_positions)
            shapes = {k: {0: batch, 1: sequence} for k in INPUTS}
            program = torch.onnx.export(model, example, dynamo=True, opset_version=OPSET, input_names=list(INPUTS),
                                        output_names=list(OUTPUTS), dynamic_shapes=shapes, verbose=False)
            return program.model_proto
    raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")


def case_tag(name: str, exporter: str) -> str:
    return f"standin-{name}-{exporter}"


def prepare(name: str, folder: Path, calib: int, evaluate: int, exporter: str = "classic") -> Case:
    """The cached stand-in in `folder`/<tag> (model.onnx, calib-N.npz, eval-N.npz), built only where missing."""
    cfg = SIZES[name]
    home = folder / case_tag(name, exporter)
    home.mkdir(parents=True, exist_ok=True)
    case = Case(name, home / "model.onnx", home / f"calib-{calib}.npz", home / f"eval-{evaluate}.npz")
    if not case.model.exists():
        _write_atomic(case.model, lambda p: onnx.save_model(export(build(cfg), exporter), p))
    for path, count, seed in ((case.calib, calib, CALIB_SEED), (case.eval, evaluate, EVAL_SEED)):
        if not path.exists():
            _write_atomic(path, lambda p, n=count, s=seed: np.savez(p, **sentences(n, s, cfg)))
    return case


# -- measuring the properties on the exported model ------------------------------------------


def _probes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Value names to watch: LayerNorm outputs, Softmax outputs, and the GELU outputs read by the FFN output MatMul."""
    constants = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = tuple(attr.t.dims)
    probes: dict[str, list[str]] = {"norm": [], "softmax": [], "gelu": []}
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            probes["norm"].append(node.output[0])
        elif node.op_type == "Softmax":
            probes["softmax"].append(node.output[0])
        elif node.op_type == "MatMul" and len(constants.get(node.input[1], ())) == 2:
            rows, cols = constants[node.input[1]]
            if rows > cols:  # [ffn, hidden]: the FFN's output projection
                probes["gelu"].append(node.input[0])
    return probes


def _run_probes(path: Path, feeds: dict[str, np.ndarray]) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    model = onnx.load(str(path))
    probes = _probes(model)
    known = {o.name for o in model.graph.output}
    for names in probes.values():
        for name in names:
            if name not in known:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                known.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every probed value
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [name for names in probes.values() for name in names] + [OUTPUTS[1]]
    values = dict(zip(wanted, session.run(wanted, {k: feeds[k] for k in INPUTS})))
    gains = [onnx.numpy_helper.to_array(init) for init in model.graph.initializer
             if init.name in {n.input[1] for n in model.graph.node if n.op_type == "LayerNormalization"}]
    found = {kind: [values[n] for n in names] for kind, names in probes.items()}
    return {**found, "pooled": [values[OUTPUTS[1]]]}, np.stack(gains)


def measure(path: Path, feeds: dict[str, np.ndarray], massive_from: int) -> dict[str, float]:
    """The properties of rule 4 on the exported float model in ONNX Runtime, over real tokens (module docstring)."""
    values, gains = _run_probes(path, feeds)
    real = feeds["attention_mask"].astype(bool)
    norms = [v[real] for v in values["norm"]]  # [tokens, hidden] each
    figures: dict[str, float] = {}
    first, last = 2 * massive_from + 2, len(norms) - 2  # the residual LayerNorms that carry them
    ratios = [np.abs(x) / np.median(np.abs(x)) for x in norms[first:last + 1]]
    stacked = np.concatenate(ratios)  # [tokens x norms, hidden]
    big = np.flatnonzero((stacked > 20).mean(axis=0) >= 0.99)
    figures["massive_channels"] = float(len(big))
    figures["massive_min_ratio"] = float(stacked[:, big].min()) if len(big) else 0.0
    figures["massive_max_ratio"] = float(stacked[:, big].max()) if len(big) else 0.0
    figures["massive_median_ratio"] = float(np.median(stacked[:, big])) if len(big) else 0.0
    final = np.abs(norms[-1]) / np.median(np.abs(norms[-1]))
    figures["output_max_ratio"] = float(np.median(final.max(axis=1)))
    first_key = []
    for probs in values["softmax"]:  # [batch, heads, query, key]
        on_first = probs[..., 0]  # [batch, heads, query]
        first_key.append(np.stack([on_first[:, h][real].mean() for h in range(probs.shape[1])]))
    first_key = np.stack(first_key)  # [layers, heads]
    figures["sink_head_share"] = float((first_key > 0.5).mean())
    figures["first_key_probability"] = float(first_key.mean())
    tails = []
    for gelu in values["gelu"]:
        channel_max = np.abs(gelu[real]).max(axis=0)
        tails.append(channel_max.max() / np.median(channel_max))
    figures["gelu_tail_ratio"] = float(min(tails))
    outlier = [np.abs(g).max() / np.median(np.abs(g)) for g in gains[1::2]]
    figures["ln_weight_outlier_ratio"] = float(min(outlier))
    pooled = values["pooled"][0] / np.linalg.norm(values["pooled"][0], axis=1, keepdims=True)
    pairs = np.triu_indices(len(pooled), 1)
    figures["sentence_cosine"] = float((pooled @ pooled.T)[pairs].mean()) if len(pairs[0]) else 1.0
    lengths = real.sum(axis=1)
    figures["length_min"], figures["length_max"] = float(lengths.min()), float(lengths.max())
    ids = feeds["input_ids"][real]
    words = ids[ids >= FIRST_WORD]
    _, counts = np.unique(words, return_counts=True)
    figures["top10_word_share"] = float(np.sort(counts)[-10:].sum() / len(words))
    return figures


def check(figures: dict[str, float]) -> list[str]:
    """What falls outside REQUIREMENTS, as sentences (empty when the stand-in is what it should be)."""
    failures = []
    for key, (low, high) in REQUIREMENTS.items():
        value = figures[key]
        if (low is not None and value < low) or (high is not None and value > high):
            failures.append(f"{key} = {value:.3g}, wanted {'>= ' + str(low) if low is not None else ''}"
                            f"{' and ' if low is not None and high is not None else ''}"
                            f"{'<= ' + str(high) if high is not None else ''}")
    return failures


def describe(figures: dict[str, float]) -> str:
    """One line of the measured properties."""
    return (f"massive x{figures['massive_min_ratio']:.0f}-{figures['massive_max_ratio']:.0f} median "
            f"(median x{figures['massive_median_ratio']:.0f}, {figures['massive_channels']:.0f} channels, "
            f"output x{figures['output_max_ratio']:.0f}), {100 * figures['sink_head_share']:.0f}% heads sink on "
            f"[CLS] (mean p {figures['first_key_probability']:.2f}), GELU tail x{figures['gelu_tail_ratio']:.1f}, "
            f"LayerNorm gain outliers x{figures['ln_weight_outlier_ratio']:.1f}, lengths "
            f"{figures['length_min']:.0f}-{figures['length_max']:.0f}, top-10 words {100 * figures['top10_word_share']:.0f}%, "
            f"cosine between different sentences {figures['sentence_cosine']:.2f}")


def _load(npz: Path) -> dict[str, np.ndarray]:
    with np.load(npz) as data:
        return {k: data[k] for k in data.files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=["tiny", "minilm"])
    parser.add_argument("--exporter", choices=EXPORTERS, default="classic")
    parser.add_argument("--samples", type=int, default=32, help="calibration sentences")
    parser.add_argument("--eval-samples", type=int, default=16, help="evaluation sentences, measured on")
    parser.add_argument("--work-dir", type=Path, help="cache of models and data (default: a temporary folder)")
    args = parser.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.sizes:
            case = prepare(name, args.work_dir or Path(scratch), args.samples, args.eval_samples, args.exporter)
            figures = measure(case.model, _load(case.eval), SIZES[name].massive_from)
            failures = check(figures)
            failed |= bool(failures)
            print(f"{name} ({args.exporter}, {case.model.stat().st_size / 2**20:.0f} MB): {describe(figures)}")
            for line in failures:
                print(f"  NOT MET: {line}")
            print(f"  {json.dumps({k: round(v, 3) for k, v in figures.items()})}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
