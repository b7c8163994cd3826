"""Compile a model past the 2 GB protobuf limit and measure peak memory against its size.

For people, not CI. It writes a stack of `--layers` fully connected layers of
`--width` x `--width` float32 weights (alternately MatMul + Add + Relu and Gemm +
Relu, He-initialized so activations stay O(1)), saved with its tensors in an external
data file, streamed one tensor at a time: the generator itself never holds more than
one weight. Then, in a fresh subprocess, `qcompiler.compile` (the int8 pipeline, the
driver's validation in ONNX Runtime included) runs on `--samples` random rows and saves
the result with external data; the child samples VmRSS between phases.

Printed: model size, peak RSS (VmHWM of the child, everything included) and its ratio
to the model size, compile time, the peak and time of each phase (load, each pass,
validation, save), SQNR of the output, and the files written.

    python tools/bench_large.py [--width 4096] [--layers 36] [--samples 4] [--rows 8]
                                [--folder DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SEED = 0
OPSET = 17
INPUT = "x"
OUTPUT = "y"


def write_model(path: Path, width: int, layers: int, seed: int = SEED) -> int:
    """Write the model to `path` and its weights to `path`.data, one tensor at a time; returns the weight bytes."""
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    nodes, initializers = [], []
    x, offset = INPUT, 0
    with open(path.parent / data_name, "wb") as data:
        for layer in range(layers):
            gemm = layer % 2 == 1
            weight = (rng.standard_normal((width, width), dtype=np.float32) * np.float32(np.sqrt(2.0 / width)))
            bias = rng.standard_normal(width, dtype=np.float32) * np.float32(0.01)
            names = [f"l{layer}.w", f"l{layer}.b"]
            for name, array in zip(names, (weight, bias)):
                initializers.append(_external(name, array, data_name, offset))
                data.write(array.tobytes())
                offset += array.nbytes
            if gemm:
                nodes.append(helper.make_node("Gemm", [x, *names], [f"l{layer}.mm"], name=f"l{layer}.gemm"))
            else:
                nodes.append(helper.make_node("MatMul", [x, names[0]], [f"l{layer}.mm"], name=f"l{layer}.matmul"))
                nodes.append(helper.make_node("Add", [f"l{layer}.mm", names[1]], [f"l{layer}.add"], name=f"l{layer}.add"))
            y = OUTPUT if layer == layers - 1 else f"l{layer}.relu"
            if layer == layers - 1:
                nodes.append(helper.make_node("Identity", [nodes[-1].output[0]], [y], name="out"))
            else:
                nodes.append(helper.make_node("Relu", [nodes[-1].output[0]], [y], name=f"l{layer}.relu"))
            x = y
    graph = helper.make_graph(nodes, "large_mlp", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", width])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.save_model(model, str(path))
    return offset


def _external(name: str, array: np.ndarray, location: str, offset: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape,
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
        tensor.external_data.add(key=key, value=value)
    return tensor


# -- one compile, in the child process ---------------------------------------------------------


class _Phases:
    """Peak VmRSS and seconds per phase, from a thread sampling /proc/self/status every 10 ms."""

    def __init__(self) -> None:
        import threading

        self.rows: list[list] = []  # [name, seconds, peak bytes]
        self._start = time.perf_counter()
        self.enter("start")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self.rows:
            self.rows[-1][1] = now - self._start
        self._start = now
        self.rows.append([name, 0.0, _status("VmRSS")])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.enter("end")
        self.rows.pop()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            row = self.rows[-1]
            row[2] = max(row[2], _status("VmRSS"))


def _status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _instrument(phases: _Phases) -> None:
    """Name each phase of compile(): the wrapped steps enter a phase when called, each pass when it starts."""
    from qcompiler import compiler, passes

    class PhaseMarks(passes.Instrument):
        def before_pass(self, model, event, ctx) -> None:
            phases.enter(event.pass_.name)

    def marked(name: str, function):
        def run(*args, **kwargs):
            phases.enter(name)
            return function(*args, **kwargs)
        return run

    context = compiler.Job.context
    compiler.Job.context = lambda job, instruments: context(job, [*instruments, PhaseMarks()])
    compiler.prepare = marked("load", compiler.prepare)
    for name in ("compare_models", "kernel_report", "measure_latency"):
        setattr(compiler, name, marked(name.replace("_", "-"), getattr(compiler, name)))
    compiler.record_float_names = marked("export", compiler.record_float_names)


def child(model: Path, calib: Path, output: Path) -> None:
    """Compile and save, then print one JSON line: phases, timings, SQNR."""
    phases = _Phases()
    _instrument(phases)
    import qcompiler

    start = time.perf_counter()
    result = qcompiler.compile(model, calib)
    compile_seconds = time.perf_counter() - start
    phases.enter("save")
    start = time.perf_counter()
    result.save(output)
    save_seconds = time.perf_counter() - start
    phases.close()
    print(json.dumps({"phases": phases.rows, "peak": _status("VmHWM"), "compile_s": compile_seconds,
                      "save_s": save_seconds, "sqnr_db": [m.sqnr_db for m in result.report.outputs],
                      "warnings": result.report.warnings}))


# -- the parent: build, run the child, check the output --------------------------------------


def _output_sqnr(float_model: Path, quant_model: Path, calib: Path) -> float:
    """SQNR (dB) of the saved quantized model against the float one on the calibration rows, both in ORT."""
    from qcompiler.ir.evaluate import open_session, sqnr_db

    with np.load(calib) as data:
        feeds = {INPUT: data[INPUT]}
    reference = open_session(float_model).run(None, feeds)[0]
    quantized = open_session(quant_model).run(None, feeds)[0]
    return sqnr_db(reference, quantized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--samples", type=int, default=4, help="calibration rows (one feed each)")
    parser.add_argument("--folder", type=Path, help="where the files go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_large.", dir=args.folder))
    try:
        model, calib, output = folder / "model.onnx", folder / "calib.npz", folder / "quantized.onnx"
        start = time.perf_counter()
        size = write_model(model, args.width, args.layers)
        rng = np.random.default_rng(SEED + 1)
        np.savez(calib, **{INPUT: rng.standard_normal((args.samples, args.width), dtype=np.float32)})
        print(f"model: {args.layers} layers of {args.width}x{args.width}, {size / 1e9:.2f} GB of float32 weights "
              f"(written in {time.perf_counter() - start:.1f} s)")
        run = subprocess.run([sys.executable, __file__, "--child", str(model), str(calib), str(output)],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            sys.exit(f"compile failed:\n{run.stderr}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        peak = result["peak"]
        print(f"peak RSS: {peak / 1e9:.2f} GB = {peak / size:.2f}x the model")
        print(f"compile: {result['compile_s']:.1f} s, save: {result['save_s']:.1f} s")
        print(f"{'phase':<18}{'seconds':>9}{'peak RSS GB':>13}")
        for name, seconds, phase_peak in result["phases"]:
            print(f"{name:<18}{seconds:>9.2f}{phase_peak / 1e9:>13.2f}")
        print("SQNR (compile report): " + ", ".join(f"{db:.1f} dB" for db in result["sqnr_db"]))
        print(f"SQNR (saved model in ORT): {_output_sqnr(model, output, calib):.1f} dB")
        files = sorted(f for f in folder.iterdir() if f.name.startswith(output.name))
        print("written: " + ", ".join(f"{f.name} ({f.stat().st_size / 1e6:.1f} MB)" for f in files))
    finally:
        if args.keep:
            print(f"files kept in {folder}")
        else:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
