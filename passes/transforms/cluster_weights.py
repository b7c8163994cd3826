"""cluster-weights: store weights as per-output-channel k-means codebooks and indices, rebuilt by standard ops.

Non-uniform quantization: each output channel's values are replaced by the nearest of
`levels` centroids fitted to that channel, so a weight whose values crowd around zero
with long tails (most trained weights) spends its levels where the values are, where a
uniform grid spends most of them on the sparse tails. It is a file-size feature, not a
speed one: ONNX Runtime rebuilds the float weight (rule 4).

1. A weight is a constant float32 initializer of at least `min_size` elements (default
   4096) read as MatMul's B ([K, N], output channel = column), Gemm's B ([K, N], or
   [N, K] with transB) or Conv's W ([M, C/group, kh, kw], output channel = M). Nodes
   kept float (rules.float_by_choice) keep float weights, as do nodes whose `algorithms`
   mark leaves cluster-weights out (overrides.py rule 4); subgraphs are not touched.
2. Per output channel, k-means (Lloyd) in numpy, vectorized over channels: every
   value goes to its nearest centroid, each centroid moves to the mean of its values,
   until no assignment changes or `iterations` (default 20) rounds. A cluster left empty
   is re-seeded at the channel's value with the largest error. It runs twice, from the
   channel's quantiles (i + 0.5) / levels and from a uniform grid over [min, max], and
   keeps per channel the codebook with the smaller squared error. Quantiles alone crowd
   the centroids where the values are dense (density p, where the least error wants
   p^(1/3)) and Lloyd moves them out to the tails slowly: on a 1024x1024 Laplace weight
   at 256 levels they end 8x worse than the uniform grid; from the grid, Lloyd never does
   worse than uniform per-channel min/max codes. `levels` is a power of two from 2 to
   256: an index takes log2(levels) bits.
3. Storage: a float32 codebook per weight ([levels, N] for a [K, N] weight, [channels,
   levels] for the others) and the indices, shaped like the weight ([channels, rest] for
   Conv): uint4 when levels <= 16 and the model's opset is >= 21 (ONNX packs them two to
   a byte and Cast-21 reads them), uint8 otherwise. A weight shared by several readers
   is stored once; the float initializer goes once nothing reads it.
4. At run time Cast(indices -> int64) -> GatherElements(codebook, indices) (-> Reshape
   to Conv's shape) rebuilds exactly codebook[index] per element, feeding the original
   op. ONNX Runtime constant-folds that chain when the session is created (the default
   optimization level), so runs cost nothing more but the session holds the float
   weight; without folding (disabled_optimizers=["ConstantFolding"]) a 1024x1024 MatMul
   at batch 1 on one thread takes 1.9 ms more per run than float's 0.2 ms (10x;
   tools/bench_weight_only.py --compare). canonicalize folds the chain back to float:
   run this pass after it.
5. Stats: weights_clustered, weights_skipped, bytes_float, bytes_stored (indices at
   their stored width, the codebook); ctx.report["cluster-weights"] states them with
   the ratio, the index type and the mean squared error of the rebuilt weights over
   their elements (with the SQNR of the rebuilt weights in dB).

    const %w: f32[1024,1024]              const %w_indices: u4[1024,1024]   const %w_codebook: f32[16,1024]
    %y = MatMul(%x, %w)          =>       %w_index64 = Cast(%w_indices) {to=7}
                                          %w_clustered = GatherElements(%w_codebook, %w_index64) {axis=0}
                                          %y = MatMul(%x, %w_clustered)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from qcompiler.ir import DType, Model, NameAllocator, Node, TensorType, Value

from ..analyses.rules import float_by_choice
from ..infra.base import Pass, register_pass
from ..infra.overrides import chosen
from .weight_quant import stored_bytes

_UINT4_OPSET = 21  # Cast reads uint4 from opset 21


class _Target(NamedTuple):
    """Input `input` of `node` is a weight whose output channels lie along `axis`."""

    node: Node
    input: int
    axis: int


@register_pass
class ClusterWeights(Pass):
    """Store MatMul/Gemm/Conv weights as per-output-channel k-means codebooks and indices (non-uniform)."""

    name = "cluster-weights"
    reads = frozenset({"quantize", "precision", "group", "algorithms"})
    algorithm = True

    @dataclass
    class Options:
        """levels: centroids per output channel (a power of two from 2 to 256); iterations: at most
        this many Lloyd rounds; min_size: weights with fewer elements stay float."""

        levels: int = 16
        iterations: int = 20
        min_size: int = 4096

        def __post_init__(self) -> None:
            if not 2 <= self.levels <= 256 or self.levels & (self.levels - 1):
                raise ValueError(f"levels must be a power of two from 2 to 256 (an index of 1 to 8 bits), "
                                 f"not {self.levels}")
            if self.iterations < 1:
                raise ValueError(f"iterations must be >= 1, not {self.iterations}")
            if self.min_size < 0:
                raise ValueError(f"min_size must be >= 0, not {self.min_size}")

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._errors = [0.0, 0.0]  # over the clustered weights: the sum of squared errors, of squared values

    def run(self, model: Model, ctx) -> bool:
        graph = model.graph
        names = NameAllocator(graph)
        index_dtype = DType.UINT4 if self.options.levels <= 16 and model.opset >= _UINT4_OPSET else DType.UINT8
        kept = float_by_choice(model)
        done: dict[tuple[Value, int], Value] = {}
        for node in list(graph.nodes):
            target = _weight_of(node)
            if target is None:
                continue
            value = node.inputs[target.input]
            if node in kept or value.const.size < self.options.min_size or value.const.dtype != np.float32:
                self.stats["weights_skipped"] += 1
                continue
            if not chosen(node, self.name):
                self.stats["not_chosen"] += 1
                continue
            key = (value, target.axis)
            if key not in done:
                done[key] = self._rebuild(model, names, node, value, target.axis, index_dtype)
            node.set_input(target.input, done[key])
            graph.drop_unread_constants([value])
        if done:
            ctx.report[self.name] = self._report(index_dtype)
        return bool(done)

    def _rebuild(self, model: Model, names: NameAllocator, node: Node, value: Value, axis: int,
                 index_dtype: DType) -> Value:
        """Rules 2-4: codebook and indices as initializers, and the ops rebuilding the weight before `node`."""
        graph, weight = model.graph, value.const
        rows = weight.reshape(weight.shape[0], -1) if axis == 0 else weight.T  # [channels, values]
        codebook, indices = kmeans(rows, self.options.levels, self.options.iterations)
        if axis == 0:  # [channels, levels] and [channels, values], gathered along axis 1
            book, stored, gather_axis = codebook, indices, 1
        else:  # a [K, N] weight: [levels, N] and [K, N], gathered along axis 0
            book, stored, gather_axis = np.ascontiguousarray(codebook.T), np.ascontiguousarray(indices.T), 0
        stored = stored.astype(index_dtype.numpy)
        index_value = graph.add_constant(Value(names.fresh(f"{value.name}_indices"), const=stored))
        book_value = graph.add_constant(Value(names.fresh(f"{value.name}_codebook"), const=book))
        wide = Value(names.fresh(f"{value.name}_index64"), TensorType(DType.INT64, stored.shape))
        graph.insert_before(node, Node("Cast", [index_value], [wide], attributes={"to": int(DType.INT64)}))
        flat = stored.shape != weight.shape
        gathered = Value(names.fresh(f"{value.name}_{'rows' if flat else 'clustered'}"),
                         TensorType(DType.FLOAT, stored.shape))
        graph.insert_before(node, Node("GatherElements", [book_value, wide], [gathered],
                                       attributes={"axis": gather_axis}))
        if flat:
            shape = graph.add_constant(Value(names.fresh(f"{value.name}_shape"),
                                             const=np.array(weight.shape, dtype=np.int64)))
            reshaped = Value(names.fresh(f"{value.name}_clustered"), value.type)
            graph.insert_before(node, Node("Reshape", [gathered, shape], [reshaped]))
            gathered = reshaped
        rebuilt = np.take_along_axis(codebook, indices.astype(np.int64), axis=1)
        self._errors[0] += float(np.sum((rebuilt.astype(np.float64) - rows) ** 2))
        self._errors[1] += float(np.sum(rows.astype(np.float64) ** 2))
        self.stats["weights_clustered"] += 1
        self.stats["elements"] += weight.size
        self.stats["bytes_float"] += weight.nbytes
        self.stats["bytes_stored"] += stored_bytes(stored) + book.nbytes
        return gathered

    def _report(self, index_dtype: DType) -> dict:
        stats, (error, signal) = self.stats, self._errors
        return {
            "levels": self.options.levels, "index_type": index_dtype.name.lower(),
            "weights": stats["weights_clustered"], "skipped": stats["weights_skipped"], "not_chosen": stats["not_chosen"],
            "float_bytes": stats["bytes_float"], "stored_bytes": stats["bytes_stored"],
            "ratio": round(stats["bytes_float"] / max(stats["bytes_stored"], 1), 2),
            "weight_mse": error / max(stats["elements"], 1),
            "weight_sqnr_db": round(float(10 * np.log10(signal / error)), 2) if error > 0 else float("inf"),
        }


def kmeans(rows: np.ndarray, levels: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2: per row of `rows` [channels, n], a sorted float32 codebook [channels, levels] and each value's
    nearest centroid's index [channels, n] (uint8), the better per row of two runs of Lloyd's algorithm."""
    rows = rows.astype(np.float64)
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = _Sorted(np.take_along_axis(rows, order, axis=1))
    quantiles = np.quantile(ordered.data, (np.arange(levels) + 0.5) / levels, axis=1).T
    grid = np.linspace(ordered.data[:, 0], ordered.data[:, -1], levels, axis=1)
    runs = []
    for start in (quantiles, grid):
        book, edges = _lloyd(ordered, start.astype(np.float32), iterations)
        labels = ordered.labels(edges)
        runs.append((book, labels, np.sum((np.take_along_axis(book, labels, axis=1) - ordered.data) ** 2, axis=1)))
    grid_better = (runs[1][2] < runs[0][2])[:, None]
    centroids = np.where(grid_better, runs[1][0], runs[0][0])
    labels = np.empty(rows.shape, np.uint8)
    np.put_along_axis(labels, order, np.where(grid_better, runs[1][1], runs[0][1]), axis=1)
    return centroids, labels


class _Sorted:
    """Rows sorted ascending, with what makes a Lloyd round cost O(levels) per row: each value's
    nearest centroid is a run of consecutive values, bounded by the midpoints between centroids."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        channels, n = data.shape
        self.sums = np.concatenate([np.zeros((channels, 1)), np.cumsum(data, axis=1)], axis=1)
        # Each row mapped into its own interval [2c, 2c + 1]: one searchsorted serves every row at once.
        self.low = data[:, :1]
        self.span = np.maximum(data[:, -1:] - self.low, np.finfo(np.float64).tiny)
        self.offset = 2.0 * np.arange(channels)[:, None]
        self.keys = ((data - self.low) / self.span + self.offset).reshape(-1)

    def edges(self, centroids: np.ndarray) -> np.ndarray:
        """[channels, levels + 1]: cluster j of a row holds its sorted values edges[j]:edges[j + 1]."""
        channels, n = self.data.shape
        bounds = (centroids[:, :-1].astype(np.float64) + centroids[:, 1:]) / 2
        found = np.searchsorted(self.keys, ((bounds - self.low) / self.span + self.offset).reshape(-1))
        inner = np.clip(found.reshape(bounds.shape) - n * np.arange(channels)[:, None], 0, n)
        return np.concatenate([np.zeros((channels, 1), np.int64), inner, np.full((channels, 1), n)], axis=1)

    def labels(self, edges: np.ndarray) -> np.ndarray:
        """Each sorted value's cluster (`edges` of all rows or of some): the number of inner edges at or
        before its position."""
        channels, n = edges.shape[0], self.data.shape[1]
        steps = np.zeros((channels, n + 1), np.int64)
        np.add.at(steps, (np.repeat(np.arange(channels), edges.shape[1] - 2), edges[:, 1:-1].reshape(-1)), 1)
        return np.cumsum(steps, axis=1)[:, :n]


def _lloyd(rows: _Sorted, centroids: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's rounds from `centroids` [channels, levels] (sorted per row) until no assignment changes or
    `iterations` rounds: the final centroids and the edges of their clusters."""
    edges = rows.edges(centroids)
    for _ in range(iterations):
        centroids = _means(rows, edges, centroids)
        updated = rows.edges(centroids)
        if np.array_equal(updated, edges):
            break
        edges = updated
    return centroids, edges


def _means(rows: _Sorted, edges: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each centroid moved to the mean of its values; an empty one re-seeded at its row's worst-served values;
    sorted per row."""
    counts = np.diff(edges, axis=1)
    sums = np.take_along_axis(rows.sums, edges[:, 1:], axis=1) - np.take_along_axis(rows.sums, edges[:, :-1], axis=1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    starved = np.flatnonzero((counts == 0).any(axis=1))
    if starved.size:
        data = rows.data[starved]
        labels = rows.labels(edges[starved])
        error = np.abs(data - np.take_along_axis(means[starved], labels, axis=1))
        worst = np.take_along_axis(data, np.argsort(-error, axis=1, kind="stable"), axis=1)
        empty = counts[starved] == 0
        # The k-th empty centroid of a row takes its k-th worst value (cycling when a row has fewer values
        # than levels, e.g. a 3x3 filter at 16 levels).
        rank = (np.cumsum(empty, axis=1) - 1) % data.shape[1]
        picked, slots = np.nonzero(empty)
        means[starved[picked], slots] = worst[picked, rank[picked, slots]]
    return np.sort(means.astype(np.float32), axis=1)


def _weight_of(node: Node) -> _Target | None:
    """Rule 1: where `node` reads a float initializer as a weight, and its output-channel axis."""
    if node.domain:
        return None
    if node.op_type == "MatMul":
        target, ndim = _Target(node, 1, 1), 2
    elif node.op_type == "Gemm":
        target, ndim = _Target(node, 1, 0 if node.attr("transB", 0) else 1), 2
    elif node.op_type == "Conv":
        target, ndim = _Target(node, 1, 0), None
    else:
        return None
    if len(node.inputs) <= target.input:
        return None
    value = node.inputs[target.input]
    if value is None or value.producer is not None or value.const_array is None:
        return None  # not an initializer holding its data
    rank = value.const.ndim
    return target if (rank == ndim if ndim else rank >= 3) else None
