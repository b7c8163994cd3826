"""Time the IR's stages (ONNX import, print, parse, export) on generated graphs.

For people, not CI: it prints a table of seconds and microseconds per node per stage
at a few graph sizes, so one can see whether each stage grows linearly. The only hard
check is that print -> parse -> print gives the same text (exit status 1 if not).

    python tools/bench_ir.py [--sizes 1000 10000 50000] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir

SEED = 0
OPSET = 17
C, H, W = 8, 8, 8  # activation [1, C, H, W]; small so weights stay tens of MB at 50k nodes
STAGES = ("import", "import-noinfer", "print", "parse", "export")


class _Builder:
    """Accumulates a single-chain ONNX graph block by block, with unique names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.block = 0

    def const(self, name: str, array: np.ndarray) -> str:
        full = f"b{self.block}.{name}"
        self.inits.append(numpy_helper.from_array(array, full))
        return full

    def weight(self, name: str, *shape: int) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * 0.1).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        name = f"/b{self.block}/{op_type}_{len(self.nodes)}"  # PyTorch-export style names
        outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs


def _conv_residual(b: _Builder, x: str) -> str:
    """ResNet-style: 3x3 conv (elided weight), relu, 1x1 conv, add skip, relu."""
    (y,) = b.op("Conv", [x, b.weight("w3", C, C, 3, 3), b.weight("b3", C)], pads=[1, 1, 1, 1])
    (y,) = b.op("Relu", [y])
    (y,) = b.op("Conv", [y, b.weight("w1", C, C, 1, 1), b.weight("b1", C)])
    (y,) = b.op("Add", [y, x])
    return b.op("Relu", [y])[0]


def _matmul_add(b: _Builder, x: str) -> str:
    """Linear layer on the last axis: 8x8 weight (64 elements, elided), 8-element bias (inline)."""
    (y,) = b.op("MatMul", [x, b.weight("w", W, W)])
    (y,) = b.op("Add", [y, b.weight("bias", W)])
    return b.op("Relu", [y])[0]


def _reshape_transpose(b: _Builder, x: str) -> str:
    """Attention-style shuffling with small int64 shape constants (printed inline)."""
    (y,) = b.op("Reshape", [x, b.const("shape", np.array([1, C, H * W], np.int64))])
    (y,) = b.op("Transpose", [y], perm=[0, 2, 1])
    (y,) = b.op("Transpose", [y], perm=[0, 2, 1])
    return b.op("Reshape", [y, b.const("back", np.array([1, C, H, W], np.int64))])[0]


def _split_concat(b: _Builder, x: str) -> str:
    """Two-branch block: split channels, different activations, concat back."""
    lo, hi = b.op("Split", [x, b.const("split", np.array([C // 2, C // 2], np.int64))], n_out=2, axis=1)
    (lo,) = b.op("Relu", [lo])
    (hi,) = b.op("Sigmoid", [hi])
    return b.op("Concat", [lo, hi], axis=1)[0]


BLOCKS = (_conv_residual, _matmul_add, _reshape_transpose, _split_concat)
BLOCK_WEIGHTS = (0.35, 0.25, 0.2, 0.2)


def make_model(n_nodes: int, seed: int = SEED) -> onnx.ModelProto:
    """A chain of mixed blocks with at least `n_nodes` nodes; same seed, same model."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    x = "input"
    while len(b.nodes) < n_nodes:
        block = BLOCKS[rng.choice(len(BLOCKS), p=BLOCK_WEIGHTS)]
        x = block(b, x)
        b.block += 1
    graph = helper.make_graph(
        b.nodes,
        f"bench{n_nodes}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, C, H, W])],
        initializer=b.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench(proto: onnx.ModelProto, repeat: int) -> tuple[dict[str, float], bool]:
    """Best-of-`repeat` seconds per stage, and whether print -> parse -> print is a fixpoint."""
    best = dict.fromkeys(STAGES, float("inf"))
    fixpoint = True
    for _ in range(repeat):
        times: dict[str, float] = {}
        times["import"], model = _timed(lambda: ir.load_model(proto))
        times["import-noinfer"], _ = _timed(lambda: ir.load_model(proto, infer_shapes=False))
        weights: dict[str, np.ndarray] = {}
        times["print"], text = _timed(lambda: ir.print_model(model, weights=weights))
        times["parse"], parsed = _timed(lambda: ir.parse_model(text, weights=weights))
        times["export"], _ = _timed(lambda: ir.to_onnx(model))
        fixpoint &= ir.print_model(parsed, weights={}) == text
        best = {stage: min(best[stage], times[stage]) for stage in STAGES}
    return best, fixpoint


def print_table(rows: list[tuple[int, float, dict[str, float], bool]]) -> None:
    """Seconds and us/node side by side; a flat us/node column means linear growth."""
    head = f"{'nodes':>7} {'MB':>6} " + " ".join(f"{s:>23}" for s in STAGES) + "  fixpoint"
    sub = f"{'':>7} {'':>6} " + " ".join(f"{'s':>10} {'us/node':>12}" for _ in STAGES)
    print(head)
    print(sub)
    for nodes, mb, times, fixpoint in rows:
        cells = " ".join(f"{times[s]:>10.3f} {times[s] / nodes * 1e6:>12.1f}" for s in STAGES)
        print(f"{nodes:>7} {mb:>6.1f} {cells}  {'ok' if fixpoint else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000],
                        help="approximate node counts of the generated graphs")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the best time is kept")
    args = parser.parse_args(argv)
    bench(make_model(10), 1)  # one-off costs (lark grammar build, lazy imports) are not per node
    rows = []
    for size in args.sizes:
        proto = make_model(size)
        print(f"timing {len(proto.graph.node)} nodes ...", file=sys.stderr, flush=True)
        times, fixpoint = bench(proto, max(1, args.repeat))
        rows.append((len(proto.graph.node), proto.ByteSize() / 2**20, times, fixpoint))
    print_table(rows)
    if not all(row[3] for row in rows):
        print("print -> parse -> print is NOT a fixpoint at some size", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
