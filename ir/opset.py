"""Raising a model's opset before import, checked in ONNX Runtime.

Quantization needs recent opsets (per-channel DequantizeLinear 13, 16-bit QuantizeLinear
21). ONNX's version converter does the work, but not always right: some adapters only
relabel an op whose meaning changed (Hardmax from 12 to 13, where `axis` stopped
flattening the input; Resize from 10 to 11 in linear mode), others refuse an attribute
value (BatchNormalization's spatial=0 from 8 to 9). So a conversion is trusted only
once the new model computes what the old one did.

1. A target opset not above the model's default-domain opset returns the model itself.
2. `onnx.version_converter.convert_version` raises the default domain; other domains
   keep their versions. When it fails, converting one opset at a time finds the step,
   and the ModelLoadError names it and the model's ops whose definition changes there.
3. The IR version becomes at least the lowest that knows the new opset
   (`onnx.helper.find_min_ir_version_for`), so the model declares a consistent pair.
   Below IR 4, ONNX Runtime treats initializers listed as graph inputs as constants a
   feed cannot override; when the IR version crosses 4 they leave the input list, so
   the model computes what it did and its weights stay constants.
4. Both models run in ONNX Runtime (CPU, one thread) on the same seeded random feeds:
   symbolic and unknown dims of size `_SYMBOLIC_SIZE`, floats standard normal,
   integers 0..3, booleans either. Float outputs must agree within `rtol` of each
   element plus `rtol` of the output's largest magnitude, others exactly; otherwise a
   ModelLoadError names the model, the output, the difference and the ops whose
   definition changed between the two opsets.
5. A model ONNX Runtime cannot load or run at its old opset cannot be checked: that is
   a ModelLoadError too, never an unchecked conversion.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from .errors import ModelLoadError
from .evaluate import open_session, run
from .onnx_import import _graphs

_SYMBOLIC_SIZE = 4
_OVERRIDABLE_IR = 4  # from this IR version on, a feed may override an initializer-input
_SEED = 0


def convert_opset(proto: onnx.ModelProto, opset: int, *, rtol: float = 1e-5,
                  label: str | None = None, feeds: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """`proto` with its default-domain opset raised to `opset`, checked to compute the same.

    `label` names the model in errors (default: its graph name). `feeds` (one real input,
    e.g. a calibration sample) replace rule 4's random ones: a model with dynamic spatial
    dims may not run at the random feeds' size. Raises ModelLoadError when the converter
    fails or the converted model computes something else.
    """
    label = label or f"model {proto.graph.name!r}"
    old = _default_opset(proto)
    if opset <= old:
        return proto
    converted = _convert(proto, old, opset, label)
    _declare_ir_version(converted, proto.ir_version)
    _check_same(proto, converted, old, opset, rtol, label, feeds)
    return converted


def _default_opset(proto: onnx.ModelProto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _convert(proto: onnx.ModelProto, old: int, new: int, label: str) -> onnx.ModelProto:
    try:
        return onnx.version_converter.convert_version(proto, new)
    except Exception as err:  # the converter raises RuntimeError, ValueError, ...
        raise ModelLoadError(f"{label}: cannot convert from opset {old} to {new}: the ONNX version converter "
                             f"fails{_failing_step(proto, old, new)}: {_reason(err)}") from None


def _failing_step(proto: onnx.ModelProto, old: int, new: int) -> str:
    """Where the converter fails, found one opset at a time: the step and the ops changing there."""
    current = proto
    for step in range(old, new):
        try:
            current = onnx.version_converter.convert_version(current, step + 1)
        except Exception:  # the converter raises RuntimeError, ValueError, ...
            changing = ", ".join(_changed_ops(proto, step, step + 1)) or "none of the model's"
            return f" from opset {step} to {step + 1} (ops changing there: {changing})"
    return ""  # fails in one go only


def _reason(err: Exception) -> str:
    """The converter's message without its source location and assertion text."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0].rsplit(" failed: ", 1)[-1]


def _changed_ops(proto: onnx.ModelProto, old: int, new: int) -> list[str]:
    """Default-domain ops of the model whose definition differs between the two opsets."""
    changed = []
    for op_type in sorted(_op_types(proto)):
        versions = {_since_version(op_type, v) for v in (old, new)}
        if len(versions) > 1:
            changed.append(op_type)
    return changed


def _op_types(proto: onnx.ModelProto) -> set[str]:
    return {node.op_type for graph in _graphs(proto.graph) for node in graph.node if node.domain in ("", "ai.onnx")}


def _since_version(op_type: str, opset: int) -> int | None:
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=opset, domain="").since_version
    except onnx.defs.SchemaError:
        return None


def _declare_ir_version(converted: onnx.ModelProto, old_ir: int) -> None:
    """Rule 3: at least the IR version the new opsets need; initializer-inputs go when crossing IR 4."""
    needed = onnx.helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = max(old_ir, needed)
    if old_ir < _OVERRIDABLE_IR <= converted.ir_version:
        weights = {t.name for t in converted.graph.initializer}
        kept = [i for i in converted.graph.input if i.name not in weights]
        del converted.graph.input[:]
        converted.graph.input.extend(kept)


def _check_same(original: onnx.ModelProto, converted: onnx.ModelProto, old: int, new: int, rtol: float,
                label: str, feeds: dict[str, np.ndarray] | None) -> None:
    """Rules 4 and 5."""
    if feeds is None:
        feeds = dict(_random_feeds(original, label))
    before = _run(original, feeds, f"{label} at opset {old}", "so the conversion cannot be checked")
    after = _run(converted, feeds, f"{label} converted to opset {new}", "")
    hint = ", ".join(_changed_ops(original, old, new)) or "none"
    for name, want, got in zip([o.name for o in original.graph.output], before, after):
        difference = _difference(want, got, rtol)
        if difference:
            raise ModelLoadError(f"{label}: converting from opset {old} to {new} changes output {name!r}: "
                                 f"{difference} (ops whose definition changed: {hint})")


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str, consequence: str) -> list:
    failure = f"{what} does not run in ONNX Runtime{', ' if consequence else ''}{consequence}"
    session = open_session(proto, threads=1, failure=failure, error=ModelLoadError)
    return run(session, feeds, failure=failure, error=ModelLoadError)


def _random_feeds(proto: onnx.ModelProto, what: str) -> Iterator[tuple[str, np.ndarray]]:
    """Rule 4's feeds for every graph input without an initializer."""
    rng = np.random.default_rng(_SEED)
    weights = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in weights:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            raise ModelLoadError(f"{what}: input {value.name!r} is not a tensor, so the conversion cannot be checked")
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else _SYMBOLIC_SIZE for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if dtype.kind == "f":
            yield value.name, rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            yield value.name, rng.integers(0, 2, shape).astype(bool)
        else:
            yield value.name, rng.integers(0, 4, shape).astype(dtype)


def _difference(want, got, rtol: float) -> str:
    """How `got` differs from `want` (empty when it does not); sequences element by element."""
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{len(got)} elements instead of {len(want)}"
        return next((f"element {i}: {d}" for i, (w, g) in enumerate(zip(want, got))
                     if (d := _difference(w, g, rtol))), "")
    want, got = np.asarray(want), np.asarray(got)
    if want.dtype != got.dtype or want.shape != got.shape:
        return f"{got.dtype}{list(got.shape)} instead of {want.dtype}{list(want.shape)}"
    if want.dtype.kind not in "fc":
        mismatched = int(np.count_nonzero(want != got))
        return f"{mismatched} of {want.size} elements differ" if mismatched else ""
    finite = np.isfinite(want)
    atol = rtol * float(np.abs(want[finite]).max(initial=0.0))
    if np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        return ""
    error = np.abs(got.astype(np.float64) - want)
    return f"max |difference| {np.nanmax(error):.3g} where the output reaches {atol / rtol:.3g} (rtol {rtol:g})"
