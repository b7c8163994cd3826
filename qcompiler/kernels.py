"""Which kernels ONNX Runtime runs for a QDQ model: how much of its compute is integer.

A QDQ model only says what may run in int8; ONNX Runtime decides, fusing
DequantizeLinear -> op -> QuantizeLinear into an integer kernel where its CPU
provider has one and leaving a float kernel between Q/DQ pairs where not. The report
reads the graph ONNX Runtime actually runs and weighs each of our compute nodes
(Conv, ConvTranspose, Gemm, MatMul) by its multiply-accumulates.

1. The optimized graph: a session at ORT_ENABLE_ALL, InferenceSession's default and so
   what a deployment runs, saved through `optimized_model_filepath` (initializers in a
   side file that is not read back). ALL adds layout transforms to EXTENDED's QDQ
   fusions (NHWC QLinearConv, NCHWc float Conv) that rename activations; weights keep
   their names, which rule 3 relies on.
2. Integer kernels are the op types in ort-cpu's `integer_kernels` (passes/infra/target.py),
   in any domain; every other kernel computes in float. `op_counts` counts every optimized node, "domain::Op"
   outside the default domain.
3. Each of our compute nodes has anchors, names that survive ORT's fusions (exported
   names, as `ir.to_onnx` writes them):
   - strong: the quantized constants its DequantizeLinear inputs read (the int8 weight,
     the int32 bias), its output, the outputs of a single-reader Relu/Clip chain after
     it (ReluQuantFusion, ClipQuantFusion drop them), and the output of a QuantizeLinear
     reading its (or the chain's) output, which a fused kernel writes;
   - weak: the quantized activations its DequantizeLinear inputs read (Q outputs).
   A MatMulInteger (dynamic-quant's) anchors on the int8 weight it reads itself.
4. Integer kernels, in graph order, each claim one unclaimed node: the one sharing the
   most strong anchors with the kernel's inputs and outputs (ties: more weak anchors,
   then our graph order); with no strong anchor shared, the only node sharing a weak
   one, since an activation read by several nodes cannot tell them apart.
5. Unclaimed nodes ran in float, and are listed by node name (their output's name when
   unnamed) in `float_nodes`.
6. MatMulNBits nodes (weight-only) are compute nodes too, written by us and kept by ORT:
   integer when their accuracy_level is 4, at which the kernel quantizes activations to
   int8 and multiplies in integers; at level 0 it multiplies in float.

    ours, before ORT                                anchors of the Conv
    %x_q  = QuantizeLinear(%x)
    %x_dq = DequantizeLinear(%x_q)                  weak   %x_q
    %w_dq = DequantizeLinear(%w_quantized)          strong %w_quantized
    %b_dq = DequantizeLinear(%b_quantized)          strong %b_quantized
    %c    = Conv(%x_dq, %w_dq, %b_dq)               strong %c
    %r    = Relu(%c)                                strong %r
    %r_q  = QuantizeLinear(%r)                      strong %r_q

    ORT_ENABLE_EXTENDED                             ORT_ENABLE_ALL (NHWC layout renames activations)
    %r_q = QLinearConv(%x_q, .., %w_quantized,      %t  = Transpose(%x_q)
                       .., %b_quantized)            %c' = QLinearConv(%t, .., %w_quantized, .., %b_quantized)
    shares %x_q, %w_quantized, %b_quantized, %r_q   shares %w_quantized, %b_quantized: claims the Conv too

MACs come from our IR's shapes; symbolic and unknown dims count as 1, since only the
share matters (`node_macs` says what it approximates). FLOPs are 2 x MACs.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcompiler import ir
from qcompiler.ir.evaluate import ModelSource, open_session
from qcompiler.ir.naming import unique_names
from qcompiler.passes.analyses.cost import COMPUTE_OPS, node_macs
from qcompiler.passes.infra.target import Target

_ORT_CPU = Target.named("ort-cpu")  # validation runs every model there, whatever its target
_OURS = COMPUTE_OPS | {"MatMulInteger"}  # dynamic-quant's MatMulInteger reads its int8 weight directly
_INT8_COMPUTE = 4  # MatMulNBits accuracy_level: activations quantized to int8 inside the kernel


@dataclass
class KernelReport:
    """What ONNX Runtime runs for a model: kernel counts and the integer share of compute."""

    op_counts: dict[str, int]
    integer_flops: int
    float_flops: int
    integer_share: float
    float_nodes: list[str]

    def summary(self) -> str:
        """One line: the integer share, and the compute nodes left in float."""
        line = f"integer kernels carry {100 * self.integer_share:.1f}% of the Conv/Gemm/MatMul compute"
        if self.float_nodes:
            shown = ", ".join(self.float_nodes[:5]) + (", ..." if len(self.float_nodes) > 5 else "")
            line += f"; {len(self.float_nodes)} node(s) run in float: {shown}"
        return line


def kernel_report(quant_model: ir.Model, *, threads: int = 1, exported: ModelSource | None = None) -> KernelReport:
    """The kernels ONNX Runtime chose for `quant_model` (any model: a float one reports share 0).

    `exported` is `quant_model` as ONNX (a ModelProto, or a path such as a ModelFile) when
    the caller has it already: export is not free on large models.
    """
    optimized = _optimized_graph(exported if exported is not None else quant_model, threads)
    kernels = list(_onnx_nodes(optimized.graph))
    ours = [node for node in quant_model.graph.all_nodes() if not node.domain and node.op_type in _OURS]
    integer = _claimed(ours, [k for k in kernels if k.op_type in _ORT_CPU.integer_kernels],
                       unique_names(quant_model.graph))
    macs = {node: node_macs(node) for node in ours}
    for node in quant_model.graph.all_nodes():  # rule 6: ours already, ORT keeps them as written
        if node.domain == "com.microsoft" and node.op_type == "MatMulNBits":
            ours.append(node)
            macs[node] = node_macs(node)
            if node.attr("accuracy_level", 0) == _INT8_COMPUTE:
                integer.add(node)
    integer_macs = sum(macs[node] for node in integer)
    total = sum(macs.values())
    return KernelReport(
        op_counts=dict(Counter(_op_name(k) for k in kernels)),
        integer_flops=2 * integer_macs,
        float_flops=2 * (total - integer_macs),
        integer_share=integer_macs / total if total else 0.0,
        float_nodes=[node.name or node.outputs[0].name for node in ours if node not in integer],
    )


def _optimized_graph(model: ModelSource, threads: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "optimized.onnx"
        open_session(model, threads=threads, save_optimized=path,
                     failure="ONNX Runtime cannot load the quantized model")
        return onnx.load(str(path), load_external_data=False)


def _onnx_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Nodes of `graph` and, depth first, of the subgraphs in their attributes."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _onnx_nodes(sub)


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _claimed(ours: list[ir.Node], kernels: list[onnx.NodeProto], names: dict[ir.Value, str]) -> set[ir.Node]:
    """Our nodes that integer kernels claim (rule 4)."""
    strong: dict[str, list[int]] = {}
    weak: dict[str, list[int]] = {}
    for index, node in enumerate(ours):
        node_strong, node_weak = _anchors(node, names)
        for name in node_strong:
            strong.setdefault(name, []).append(index)
        for name in node_weak:
            weak.setdefault(name, []).append(index)
    claimed: set[int] = set()
    for kernel in kernels:
        touched = {*kernel.input, *kernel.output} - {""}
        scores = Counter(i for name in touched for i in strong.get(name, ()) if i not in claimed)
        weak_scores = Counter(i for name in touched for i in weak.get(name, ()) if i not in claimed)
        if scores:
            claimed.add(min(scores, key=lambda i: (-scores[i], -weak_scores[i], i)))
        elif len(weak_scores) == 1:
            claimed.update(weak_scores)
    return {ours[i] for i in claimed}


def _anchors(node: ir.Node, names: dict[ir.Value, str]) -> tuple[set[str], set[str]]:
    """(strong, weak) names of `node` that its integer kernel would read or write (rule 3)."""
    strong, weak = set(), set()
    for value in node.inputs:
        source = value if node.op_type == "MatMulInteger" and value is not None and value.is_const \
            else _dequantized(value)
        if source is not None:
            (strong if source.is_const else weak).add(names[source])
    value = node.outputs[0]
    strong.add(names[value])
    while True:
        readers = value.consumers()
        strong.update(names[r.outputs[0]] for r in readers if r.op_type == "QuantizeLinear" and not r.domain)
        if len(readers) != 1 or readers[0].op_type not in _ORT_CPU.absorbed or readers[0].domain or value.is_graph_output():
            return strong, weak
        value = readers[0].outputs[0]
        strong.add(names[value])


def _dequantized(value: ir.Value | None) -> ir.Value | None:
    """The quantized tensor a DequantizeLinear turns into `value`, if one does."""
    producer = value.producer if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain:
        return None
    return producer.inputs[0]
