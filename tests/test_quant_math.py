"""Quantization math against ONNX Runtime: its quantizer's parameters, its Q/DQ kernels.

References: `compute_scale_zp` from onnxruntime.quantization (the parameters ORT's
quantizer writes for a range) and real QuantizeLinear/DequantizeLinear nodes run by
ONNX Runtime (the values a quantized model computes). Plus a property: inside the
range, a round trip is off by at most half a step.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from qcompiler.ir import DType, QuantParams
from qcompiler.ir.evaluate import open_session
from qcompiler.ir.quant import dequantize, dtype_range, quantize

ORT_TYPES = [DType.INT8, DType.UINT8, DType.INT16, DType.UINT16]
ALL_TYPES = [*ORT_TYPES, DType.INT4, DType.UINT4]


def ort_params(lo: float, hi: float, dtype: DType, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) ORT's quantizer derives from a float32 range."""
    qmin, qmax = get_qmin_qmax_for_qType(int(dtype), symmetric=symmetric)
    zero_point, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax, symmetric)
    return scale, zero_point


def run_node(op: str, x: np.ndarray, params: QuantParams, then_dequantize: bool = False) -> np.ndarray:
    """Run one QuantizeLinear or DequantizeLinear node (or Q then DQ) in ONNX Runtime, opset 21."""
    attrs = {k: v for k, v in (("axis", params.axis), ("block_size", params.block_size)) if v is not None}
    x_type = TensorProto.FLOAT if op == "QuantizeLinear" else int(params.dtype)
    out_type = int(params.dtype) if op == "QuantizeLinear" and not then_dequantize else TensorProto.FLOAT
    nodes = [helper.make_node(op, ["x", "scale", "zp"], ["q" if then_dequantize else "y"], **attrs)]
    if then_dequantize:
        nodes.append(helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], **attrs))
    graph = helper.make_graph(
        nodes, "qdq",
        [helper.make_tensor_value_info("x", x_type, x.shape)],
        [helper.make_tensor_value_info("y", out_type, x.shape)],
        [numpy_helper.from_array(params.scale, "scale"), numpy_helper.from_array(params.zero_point, "zp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    return open_session(model).run(None, {"x": x})[0]


def test_dtype_ranges():
    assert {d: dtype_range(d) for d in [*ALL_TYPES, DType.INT32]} == {
        DType.INT8: (-128, 127), DType.UINT8: (0, 255), DType.INT16: (-32768, 32767),
        DType.UINT16: (0, 65535), DType.INT4: (-8, 7), DType.UINT4: (0, 15),
        DType.INT32: (-(2**31), 2**31 - 1),
    }
    with pytest.raises(ValueError, match="f8e4m3fn has no integer"):
        dtype_range(DType.FLOAT8E4M3FN)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("dtype", ALL_TYPES, ids=lambda d: d.short_name)
def test_from_range_equals_onnx_runtime(dtype, symmetric):
    rng = np.random.default_rng(int(dtype) * 2 + symmetric)
    ranges = [(-1.0, 1.0), (0.0, 6.0), (-3.5, 0.0), (-1e-3, 7.25), (0.5, 2.0), (-2.0, -0.25), (-1e-30, 1e-30)]
    ranges += [tuple(sorted(rng.standard_normal(2) * 10.0 ** rng.integers(-4, 5))) for _ in range(200)]
    for lo, hi in ranges:
        ours = QuantParams.from_range(lo, hi, dtype, symmetric=symmetric)
        scale, zero_point = ort_params(lo, hi, dtype, symmetric)
        assert ours.scale.dtype == np.float32 and ours.scale == scale, (lo, hi)
        assert int(ours.zero_point) == int(zero_point), (lo, hi)


def test_symmetric_zero_points_are_the_midpoints():
    expected = {DType.INT8: 0, DType.INT16: 0, DType.INT4: 0, DType.UINT8: 128, DType.UINT16: 32768, DType.UINT4: 8}
    for dtype, zero_point in expected.items():
        assert int(QuantParams.from_range(-0.3, 2.0, dtype, symmetric=True).zero_point) == zero_point
    # int8 drops -128 as ORT does: +-absmax land on +-127
    assert QuantParams.from_range(-0.5, 1.27, DType.INT8, symmetric=True).scale == np.float32(0.01)


def test_per_channel_from_range_equals_onnx_runtime_channel_by_channel():
    rng = np.random.default_rng(1)
    lo, hi = -rng.random(16) * 3, rng.random(16) * 5
    lo[3], hi[3] = 0.0, 0.0  # a dead channel
    for dtype in ORT_TYPES:
        for symmetric in (False, True):
            ours = QuantParams.from_range(lo, hi, dtype, symmetric=symmetric, axis=0)
            assert ours.axis == 0 and ours.scale.shape == ours.zero_point.shape == (16,)
            for c in range(16):
                scale, zero_point = ort_params(lo[c], hi[c], dtype, symmetric)
                assert ours.scale[c] == scale
                if c != 3 or not (symmetric and dtype in (DType.UINT8, DType.UINT16)):
                    assert int(ours.zero_point[c]) == int(zero_point)


def test_zero_range_gets_unit_scale():
    for dtype in ALL_TYPES:
        asym = QuantParams.from_range(0.0, 0.0, dtype, symmetric=False)
        assert asym.scale == 1.0 and int(asym.zero_point) == 0
    # ORT writes zero point 0 here; we keep the midpoint so all channels share it
    sym = QuantParams.from_range(0.0, 0.0, DType.UINT8, symmetric=True)
    assert sym.scale == 1.0 and int(sym.zero_point) == 128
    assert ort_params(0.0, 0.0, DType.UINT8, True)[1] == 0


def test_bad_ranges_are_refused():
    for lo, hi in [(np.nan, 1.0), (-np.inf, 1.0), (0.0, np.inf)]:
        with pytest.raises(ValueError, match="not finite"):
            QuantParams.from_range(lo, hi, DType.INT8, symmetric=False)
    with pytest.raises(ValueError, match="empty"):
        QuantParams.from_range(1.0, -1.0, DType.INT8, symmetric=False)
    with pytest.raises(ValueError, match="1-D arrays with an axis"):
        QuantParams.from_range(np.zeros(3), np.ones(3), DType.INT8, symmetric=False)
    with pytest.raises(ValueError, match="no integer quantization range"):
        QuantParams.from_range(-1.0, 1.0, DType.FLOAT8E5M2, symmetric=True)


def awkward_values(rng, params: QuantParams, shape: tuple[int, ...]) -> np.ndarray:
    """Values over and beyond the range, with exact halfway points (ties) mixed in."""
    qmin, qmax = dtype_range(params.dtype)
    span = float(np.max(params.scale)) * (qmax - qmin)
    x = rng.uniform(-0.8 * span, 0.8 * span, size=shape).astype(np.float32)
    halves = (rng.integers(-40, 40, size=shape) + 0.5).astype(np.float32)
    scale = params.scale
    if params.axis is not None:
        scale = scale.reshape([-1 if d == params.axis else 1 for d in range(len(shape))])
    return np.where(rng.random(shape) < 0.3, (halves * scale).astype(np.float32), x)


def power_of_two_params(rng, dtype: DType, channels: int | None) -> QuantParams:
    """Scales that are powers of two, so x = (k + 0.5) * scale is an exact tie."""
    qmin, qmax = dtype_range(dtype)
    shape = () if channels is None else (channels,)
    scale = np.ldexp(1.0, rng.integers(-8, -2, size=shape)).astype(np.float32)
    zero_point = rng.integers(qmin, qmax + 1, size=shape)
    return QuantParams(dtype, scale, zero_point, axis=None if channels is None else 1)


@pytest.mark.parametrize("per_axis", [False, True], ids=["tensor", "axis"])
@pytest.mark.parametrize("dtype", ORT_TYPES, ids=lambda d: d.short_name)
def test_quantize_and_dequantize_equal_onnx_runtime(dtype, per_axis):
    rng = np.random.default_rng(int(dtype) + 10 * per_axis)
    shape = (3, 5, 64)
    cases = [power_of_two_params(rng, dtype, 5 if per_axis else None)]
    lo, hi = -rng.random(5) * 4, rng.random(5) * 3
    if not per_axis:
        lo, hi = lo[0], hi[0]
    for symmetric in (False, True):
        cases.append(QuantParams.from_range(lo, hi, dtype, symmetric=symmetric, axis=1 if per_axis else None))
    for params in cases:
        x = awkward_values(rng, params, shape)
        q = quantize(x, params)
        assert q.dtype == dtype.numpy
        np.testing.assert_array_equal(q, run_node("QuantizeLinear", x, params))
        np.testing.assert_array_equal(dequantize(q, params), run_node("DequantizeLinear", q, params))


def test_ties_round_half_to_even_and_saturate():
    params = QuantParams(DType.INT8, np.float32(0.5), np.int8(0))
    x = np.array([0.25, 0.75, -0.25, -0.75, 1.25, 1000.0, -1000.0], np.float32)
    np.testing.assert_array_equal(quantize(x, params), [0, 2, 0, -2, 2, 127, -128])


@pytest.mark.parametrize("dtype", [DType.INT4, DType.UINT4], ids=lambda d: d.short_name)
def test_four_bit_round_trip_equals_onnx_runtime(dtype):
    """ORT's Python API cannot hand back 4-bit tensors, so compare Q then DQ in one model."""
    rng = np.random.default_rng(4)
    for params in (QuantParams.from_range(-1.5, 2.5, dtype, symmetric=False),
                   QuantParams.from_range(-1.5, 2.5, dtype, symmetric=True),
                   QuantParams.from_range(-rng.random(4), rng.random(4), dtype, symmetric=False, axis=0)):
        x = awkward_values(rng, params, (4, 33))
        expected = run_node("QuantizeLinear", x, params, then_dequantize=True)
        np.testing.assert_array_equal(dequantize(quantize(x, params), params), expected)


def test_blocked_equals_onnx_runtime():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 10)).astype(np.float32)  # 10 = blocks of 4, 4 and 2
    scale = ((rng.random((4, 3)) + 0.1) / 50).astype(np.float32)
    params = QuantParams(DType.INT8, scale, rng.integers(-5, 5, (4, 3)), axis=1, block_size=4)
    q = quantize(x, params)
    np.testing.assert_array_equal(q, run_node("QuantizeLinear", x, params))
    np.testing.assert_array_equal(dequantize(q, params), run_node("DequantizeLinear", q, params))


def test_shapes_that_do_not_fit_are_refused():
    params = QuantParams(DType.INT8, np.ones(3, np.float32), np.zeros(3, np.int8), axis=1)
    with pytest.raises(ValueError, match="3 scales for axis 1"):
        quantize(np.zeros((2, 4), np.float32), params)
    with pytest.raises(ValueError, match="axis 1 is out of range"):
        quantize(np.zeros(3, np.float32), params)


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=300, deadline=None)
@given(bounds=st.tuples(finite, finite), dtype=st.sampled_from(ALL_TYPES), symmetric=st.booleans(),
       fractions=st.lists(st.floats(0, 1), min_size=1, max_size=50))
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(bounds, dtype, symmetric, fractions):
    lo, hi = min(bounds), max(bounds)
    params = QuantParams.from_range(lo, hi, dtype, symmetric=symmetric)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    x = (lo + np.array(fractions) * (hi - lo)).astype(np.float32)
    x = np.clip(x, lo, hi)
    error = np.abs(dequantize(quantize(x, params), params).astype(np.float64) - x)
    scale = float(params.scale)
    qmin, qmax = dtype_range(dtype)
    # float32 division and multiplication add a few ulps of |x| and of the full span
    slack = 1e-6 * (np.abs(x) + (qmax - qmin) * scale)
    assert np.all(error <= scale / 2 + slack), (x, error, scale)
