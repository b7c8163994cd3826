"""Time calibration on a ResNet-50-shaped model: qcompiler's observers against ONNX Runtime's.

For people, not CI. It builds a ResNet-50-shaped float model (random He-initialized
weights, BatchNorm already folded into the conv biases) and N random 1x3x224x224
samples in an .npz, then runs each configuration in a fresh subprocess under an
address-space cap, so each peak RSS is that configuration's alone and an out-of-memory
run kills only itself:

    float            plain ONNX Runtime inference over the N samples (the floor)
    ours-METHOD      PassManager("canonicalize,fuse,insert-observers{method=METHOD},calibrate")
                     over the .npz opened with open_calibration_data: what a compile runs
    ort-METHOD       onnxruntime.quantization's create_calibrator, collect_data, compute_data
    compile-ours     a whole `qcompiler.compile(model, data)` with its defaults and no
                     evaluation data: calibration, the passes, the export, the validation
                     on the first 64 calibration rows and the benchmark of float against
                     quantized
    compile-ort      a whole ONNX Runtime quantization: quant_pre_process, then
                     quantize_static (QDQ, per-channel, MinMax), the model written

Each side keeps its own defaults: ours taps what insert-observers marks after fuse (the
input, each Conv+Relu and Add+Relu group's output, the Conv outputs a residual Add reads,
GlobalAveragePool and Gemm; MaxPool and Flatten follow their input: 72 values), percentile
99.99 two-sided and entropy over 2048 bins;
ORT taps every float tensor, percentile 99.999 symmetric over 2048 bins, entropy over
128 bins. ORT's histogram calibrators keep every sample's activations until
collect_data ends, so their memory grows with N.

All feed one sample per run (batch 1). Columns: `setup` is session creation (float),
IR -> ONNX export of the tapped model plus its session (ours), create_calibrator:
shape-inferred load, augmentation, writing and loading the augmented model (ort).
`run` is the rest: reading the data, inference, observers and the ranges (for the
compile-* configurations: everything, setup 0); `x float` is run / float's run at the same N;
`values` the values tapped (for compile-*: the QuantizeLinear nodes written). Loading the model into the IR and opening the data
are left out. Peak RSS is the child's VmHWM, everything included. On a shared machine
one run's speed can vary severalfold; `--repeat` interleaves rounds and keeps each
configuration's fastest run.

The float and ort-* readers stream rows from the .npz; qcompiler's reader loads the
whole array (N x 0.6 MB), as its docstring says. Every session uses ONNX Runtime's
default thread count (one per core): neither calibrate (jobs=1) nor ORT's calibrators
take a thread setting, so the benchmark offers none.

    python tools/bench_calibration.py [--samples 64 512] [--configs float ours-minmax ...]
                                      [--repeat 3] [--memory-cap-gb 16] [--profile]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
OPSET = 17
INPUT = "input"
SAMPLE_SHAPE = (3, 224, 224)
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride of the first)
METHODS = ("minmax", "percentile", "entropy")
CONFIGS = ("float", *(f"ours-{m}" for m in METHODS), *(f"ort-{m}" for m in METHODS), "compile-ours", "compile-ort")
_OOM_SIGNS = ("MemoryError", "bad_alloc", "Failed to allocate", "Cannot allocate", "out of memory")


# -- the model and the data ----------------------------------------------------------------


class _Builder:
    """Accumulates ONNX nodes and He-initialized weights with unique names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1, gain: float = 1.0) -> str:
        """Conv with its folded BN bias; He scaling keeps activations O(1) through ReLUs."""
        name = f"conv{len(self.nodes)}"
        std = gain * np.sqrt(2.0 / (c_in * k * k))
        w = (self.rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) * std).astype(np.float32)
        b = (self.rng.standard_normal(c_out, dtype=np.float32) * 0.01).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
        pad = k // 2
        return self.op("Conv", [x, f"{name}.w", f"{name}.b"], name, kernel_shape=[k, k],
                       strides=[stride, stride], pads=[pad] * 4)

    def op(self, op_type: str, inputs: list[str], name: str = "", **attrs) -> str:
        name = name or f"{op_type.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def _bottleneck(b: _Builder, x: str, c_in: int, width: int, stride: int) -> str:
    """1x1 -> 3x3 (stride) -> 1x1 x4, plus the shortcut (projected when the shape changes).

    The last conv is scaled down so the residual sum does not double its variance in
    every block: 16 blocks of that would leave the head with values in the hundreds.
    """
    y = b.op("Relu", [b.conv(x, c_in, width, 1)])
    y = b.op("Relu", [b.conv(y, width, width, 3, stride)])
    y = b.conv(y, width, width * 4, 1, gain=0.3)
    shortcut = x if c_in == width * 4 and stride == 1 else b.conv(x, c_in, width * 4, 1, stride)
    return b.op("Relu", [b.op("Add", [y, shortcut])])


def make_resnet50(seed: int = SEED) -> onnx.ModelProto:
    """ResNet-50's shapes (torchvision v1.5: stride on the 3x3) with random weights; same seed, same model."""
    b = _Builder(np.random.default_rng(seed))
    x = b.op("Relu", [b.conv(INPUT, 3, 64, 7, 2)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for width, blocks, stride in STAGES:
        for i in range(blocks):
            x = _bottleneck(b, x, c_in, width, stride if i == 0 else 1)
            c_in = width * 4
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    w = (b.rng.standard_normal((1000, c_in), dtype=np.float32) * np.sqrt(1.0 / c_in)).astype(np.float32)
    b.inits += [numpy_helper.from_array(w, "fc.w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b")]
    logits = b.op("Gemm", [x, "fc.w", "fc.b"], "logits", transB=1)
    graph = helper.make_graph(b.nodes, "resnet50", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                                  [1, *SAMPLE_SHAPE])],
                              [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [1, 1000])],
                              initializer=b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def write_samples(path: Path, count: int, seed: int = SEED, chunk: int = 32) -> None:
    """An .npz holding `input` [count, 3, 224, 224], written `chunk` samples at a time.

    The member is stored uncompressed, as np.savez does, so np.load reads it back as usual;
    the first rows are the same whatever `count` is.
    """
    rng = np.random.default_rng(seed)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (count, *SAMPLE_SHAPE)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive, \
            archive.open(f"{INPUT}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_2_0(member, header)
        for start in range(0, count, chunk):
            rows = min(chunk, count - start)
            member.write(rng.standard_normal((rows, *SAMPLE_SHAPE), dtype=np.float32).tobytes())


def stream_rows(path: Path) -> Iterator[dict[str, np.ndarray]]:
    """One {input: [1, 3, 224, 224]} feed per row, read in turn: memory stays one row whatever N is."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{INPUT}.npy") as member:
        np.lib.format.read_magic(member)
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for _ in range(shape[0]):
            yield {INPUT: np.frombuffer(member.read(row_bytes), dtype).reshape(1, *shape[1:])}


# -- one configuration, in the child process -------------------------------------------------


def _float(model: Path, data: Path, scratch: Path) -> tuple[float, float, int]:
    from qcompiler.ir.evaluate import open_session

    start = time.perf_counter()
    session = open_session(model)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for feeds in stream_rows(data):
        session.run(None, feeds)
    return setup, time.perf_counter() - start, 0


def _ours(method: str) -> Callable[[Path, Path, Path], tuple[float, float, int]]:
    def run(model_path: Path, data: Path, scratch: Path) -> tuple[float, float, int]:
        from qcompiler import ir
        from qcompiler.data import input_specs, open_calibration_data
        from qcompiler.passes import PassContext, PassManager

        model = ir.load_model(model_path)
        ctx = PassContext(calibration_data=open_calibration_data(data, input_specs(model)))
        manager = PassManager(f"canonicalize,fuse,insert-observers{{method={method}}},calibrate{{progress=off}}")
        setups = _time_value_taps()
        start = time.perf_counter()
        manager.run(model, ctx)
        total = time.perf_counter() - start
        return sum(setups), total - sum(setups), ctx.report["calibrate"]["values"]

    return run


def _time_value_taps() -> list[float]:
    """Seconds each ValueTap (tapped export + session) takes to build, so setup and run can be told apart."""
    from qcompiler.passes.analyses import observers

    seconds: list[float] = []

    class TimedTap(observers.ValueTap):
        def __init__(self, *args, **kwargs) -> None:
            start = time.perf_counter()
            super().__init__(*args, **kwargs)
            seconds.append(time.perf_counter() - start)

    observers.ValueTap = TimedTap
    return seconds


def _ort(method: str) -> Callable[[Path, Path, Path], tuple[float, float, int]]:
    def run(model: Path, data: Path, scratch: Path) -> tuple[float, float, int]:
        from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.rows = stream_rows(data)

            def get_next(self) -> dict | None:
                return next(self.rows, None)

        calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                            "percentile": CalibrationMethod.Percentile}[method]
        start = time.perf_counter()
        calibrator = create_calibrator(model, None, augmented_model_path=str(scratch / "augmented.onnx"),
                                       calibrate_method=calibrate_method)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        calibrator.collect_data(Reader())
        ranges = calibrator.compute_data()
        return setup, time.perf_counter() - start, len(ranges.data)

    return run


def _compile_ours(model: Path, data: Path, scratch: Path) -> tuple[float, float, int]:
    from qcompiler import compile

    start = time.perf_counter()
    result = compile(model, data)
    result.save(scratch / "quantized.onnx")
    return 0.0, time.perf_counter() - start, result.report.qdq_nodes["QuantizeLinear"]


def _compile_ort(model: Path, data: Path, scratch: Path) -> tuple[float, float, int]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = stream_rows(data)

        def get_next(self) -> dict | None:
            return next(self.rows, None)

    start = time.perf_counter()
    prepared, quantized = scratch / "prepared.onnx", scratch / "quantized.onnx"
    quant_pre_process(str(model), str(prepared))
    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    seconds = time.perf_counter() - start
    return 0.0, seconds, sum(n.op_type == "QuantizeLinear" for n in onnx.load(quantized).graph.node)


RUNNERS = {"float": _float, "compile-ours": _compile_ours, "compile-ort": _compile_ort, **{f"ours-{m}": _ours(m) for m in METHODS}, **{f"ort-{m}": _ort(m) for m in METHODS}}


def _peak_rss_mb() -> float:
    """VmHWM: this process's peak resident set, all of it (model, sessions, data, observers)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(config: str, model: Path, data: Path, profile: bool) -> None:
    """Run one configuration and print its figures as one JSON line (the parent reads the last line)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory() as scratch:
        if profiler:
            profiler.enable()
        setup, run, values = RUNNERS[config](model, data, Path(scratch))
        if profiler:
            profiler.disable()
    text = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        text = out.getvalue()
    print(json.dumps({"setup": setup, "run": run, "values": values, "peak_mb": _peak_rss_mb(), "profile": text}))


# -- the parent: a subprocess per configuration, then the table -----------------------------


def measure(config: str, model: Path, data: Path, cap_gb: float, profile: bool) -> dict:
    """One configuration in a fresh interpreter under RLIMIT_AS; {"error": ...} when it fails."""
    cap = int(cap_gb * 2**30)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    command = [sys.executable, __file__, "--child", config, "--model", str(model), "--data", str(data)]
    done = subprocess.run(command + (["--profile"] if profile else []), capture_output=True, text=True,
                          preexec_fn=limit)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    if any(sign in done.stderr for sign in _OOM_SIGNS):
        return {"error": "out of memory"}
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"error": f"failed: {last[:80]}"}


def best_of(kept: dict | None, found: dict) -> dict:
    """The faster run's figures with the larger peak RSS; a failure replaces everything."""
    if kept is None or "error" in found:
        return found
    best = min(kept, found, key=lambda r: r["run"])
    return {**best, "peak_mb": max(kept["peak_mb"], found["peak_mb"])}


def print_table(results: dict[tuple[int, str], dict], samples: list[int], configs: list[str]) -> None:
    """One row per (N, configuration); then how each configuration's peak RSS grows with N."""
    print(f"{'N':>5} {'config':<16} {'values':>6} {'setup s':>8} {'run s':>8} {'ms/sample':>10} "
          f"{'x float':>8} {'peak MB':>8}")
    for n in samples:
        floor = results.get((n, "float"), {}).get("run")
        for config in configs:
            r = results[(n, config)]
            if "error" in r:
                print(f"{n:>5} {config:<16} {r['error']}")
                continue
            ratio = f"{r['run'] / floor:8.2f}" if floor else f"{'-':>8}"
            print(f"{n:>5} {config:<16} {r['values']:>6} {r['setup']:>8.2f} {r['run']:>8.2f} "
                  f"{r['run'] / n * 1e3:>10.1f} {ratio} {r['peak_mb']:>8.0f}")
    if len(samples) > 1:
        lo, hi = min(samples), max(samples)
        print(f"\npeak RSS, N={hi} / N={lo}:")
        for config in configs:
            a, b = results[(lo, config)], results[(hi, config)]
            growth = f"{b['peak_mb'] / a['peak_mb']:.2f}" if "peak_mb" in a and "peak_mb" in b else "-"
            print(f"  {config:<16} {growth}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 512], help="calibration set sizes N")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS), metavar="CONFIG",
                        help=f"a subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over the configurations; the fastest run of each is kept")
    parser.add_argument("--memory-cap-gb", type=float, default=16.0, help="address-space cap of each run")
    parser.add_argument("--profile", action="store_true",
                        help="run the ours-* configurations under cProfile and print their top functions")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model, args.data, args.profile)
        return 0
    results: dict[tuple[int, str], dict] = {}
    profiles: list[tuple[int, str, str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "resnet50.onnx"
        onnx.save_model(make_resnet50(), model)
        for n in args.samples:
            data = Path(scratch) / f"samples{n}.npz"
            write_samples(data, n)
            for round_ in range(1, max(1, args.repeat) + 1):  # rounds interleave, so a slow spell hits every config
                for config in args.configs:
                    if "error" in results.get((n, config), {}):
                        continue  # it failed (out of memory): it would again
                    print(f"N={n} {config} (round {round_}) ...", file=sys.stderr, flush=True)
                    profile = args.profile and config.startswith("ours-")
                    found = measure(config, model, data, args.memory_cap_gb, profile)
                    results[(n, config)] = best_of(results.get((n, config)), found)
                    if found.get("profile"):
                        profiles.append((n, config, found["profile"]))
            data.unlink()
    print_table(results, args.samples, args.configs)
    for n, config, text in profiles:
        print(f"\n== profile: N={n} {config} (by own time) ==\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
