"""Side by side: qcompiler's compile against ONNX Runtime's quantizer and NNCF, on the same models and data.

For people, not CI. The models are ResNet-50, MobileNetV2 and BERT-base built from code
(tools/bench_models.py; --quick shrinks them) and the trained digits CNN of
golden/digits_cnn (skipped with a note while that folder has no model); when named, also
the encoder stand-ins of tools/encoder_standins.py, Hugging Face-style sentence encoders
whose activations look trained: minilm, bert-base and encoder-tiny (their "tiny" size;
--quick leaves the stand-ins their size), and the conv stand-ins of tools/conv_standins.py,
nets trained briefly on synthetic tasks: mobilenetv3, db-detector and crnn (--quick takes
their "tiny" size, trained for seconds). Every tool gets the same float model, the same
calibration samples (batch 1, one per row of the .npz) and is judged on the same held-out
evaluation samples:

    qcompiler          qcompiler.compile(model, calib, eval=..., target="ort-cpu"), its defaults
    qcompiler-dynamic  the same with mode="dynamic" and no calibration data
    qcompiler-dynamic-smooth  pipeline="dynamic-smooth": smooth-quant (a Mul where nothing
                       absorbs it), then dynamic-quant with per-column weights; calibration
                       data for the channel maxima
    qcompiler-auto     qcompiler.auto(model, calib, tolerance=1, eval=...): the fastest rung of its
                       ladder within 1 point of float on its own task measures (qc compile --auto's
                       default); its compile time is the whole walk, every rung's validation included
    ort                onnxruntime.quantization: quant_pre_process, then quantize_static with
                       QDQ format, per_channel=True, MinMax calibration, its other defaults;
                       when symbolic shape inference stops (the stand-ins' position ids, sliced
                       from a buffer by the sequence length as Hugging Face does) quant_pre_process
                       runs again with auto_merge=True, and a note says so
    ort-rr             the same with reduce_range=True, which ONNX Runtime advises on CPUs
                       without VNNI (the u8 x s8 kernels saturate there)
    ort-percentile     ort with Percentile calibration (its default percentile, 99.999)
    ort-entropy        ort with Entropy calibration (its default histogram)
    ort-dynamic        onnxruntime.quantization.quantize_dynamic with its defaults
    nncf               nncf.quantize (its defaults; model_type=TRANSFORMER for BERT and the
                       stand-ins, as its documentation asks for transformers), subset_size =
                       the calibration count

By default the built models and digits run with qcompiler, ort, ort-rr and nncf, the
encoder stand-ins with qcompiler, qcompiler-dynamic, qcompiler-dynamic-smooth, ort,
ort-dynamic and nncf, the conv stand-ins with qcompiler, ort, ort-percentile, ort-entropy
and nncf; --tools sets one list for all.

1. Each tool runs in its own fresh interpreter, which writes its quantized model and
   prints its figures as one JSON line. `compile s` is measured inside it around the
   quantize call(s), reading the model included: qcompiler's is report.compile_seconds
   (it reads the .npz itself; the validation after it is excluded), ORT's is
   quant_pre_process plus quantize_static, NNCF's onnx.load plus nncf.quantize, both fed
   calibration rows already in memory. `peak RSS` is that process's VmHWM, everything
   included: qcompiler's also covers the validation its compile runs, so its peak when
   validation starts (read through compile's `log` messages) is noted under the table.
   Not ru_maxrss: Linux carries the forking parent's peak across exec into it, so every
   child would start at this benchmark's own size. `idle MB` is the same process's
   VmHWM right after importing numpy, onnx, onnxruntime and the tool's package, before
   touching the model: the share of the peak that is only the libraries (NNCF imports
   torch; symbolic shape inference, which qcompiler and quant_pre_process both run,
   imports onnxruntime.tools, which imports torch when it is installed).
2. SQNR per output, over all evaluation samples, is computed here from ONNX Runtime
   runs of the float and each quantized model joined, with qcompiler.ir.evaluate's
   sums: 10 log10(sum ref^2 / sum (ref - q)^2). The runs are made here, not by
   qcompiler.validate, so the tool under test does not grade its own outputs;
   qcompiler's own figure is kept in the JSON, and a disagreement over 0.05 dB is
   printed. The table shows each model's worst output.
   On an encoder stand-in the table shows instead: SQNR of last_hidden_state over the
   real tokens only (mask 1; padded positions are garbage any pooling drops), the mean
   over samples of the cosine similarity of sentence_embedding against float and the
   points it loses, 100 x (1 - cosine), the model file's MB and its ratio to float's. A
   note gives the float stand-in's activations as encoder_standins.measure finds them.
   On a conv stand-in the table adds its task measure (conv_standins.score: top-1, F1 of
   the map at p > 0.5, or character accuracy of greedy CTC decoding): against the float
   model's outputs (`vs float %`, 100 when they agree everywhere), against the labels
   (`task %`; the float row has the float model's), the points lost to float's on the
   labels, and the model file's MB and its ratio to float's.
3. Latency: one fresh process runs the float and every quantized model in ONNX Runtime
   (qcompiler.ir.evaluate's sessions and timing: default graph optimizations, weights
   prepacked; batch 1 = the first evaluation sample) with intra_op_num_threads 1, then
   2. Models take turns, one timed run each, the first rotating every turn, until one
   has spent --repeat x BLOCK_S seconds. The figure is each model's median run divided
   by the float model's.
   Other work on the machine skews it, 2 threads most (a run waits for its slowest
   thread): the 1-minute load average is printed before and after.
4. Integer share: the share of Conv/Gemm/MatMul multiply-accumulates ONNX Runtime runs
   in integer kernels, read from its optimized graph by qcompiler.kernels, the same way
   for every tool's model.
5. Models and data are cached in --work-dir (default: a temporary folder removed at the
   end), so repeated runs skip the export; quantized models are rewritten every run.

    python tools/bench.py [--quick] [--models resnet50 bert minilm bert-base ...] [--tools qcompiler ort ...]
                          [--exporter classic|dynamo] [--samples 32] [--eval-samples 16] [--repeat 7]
                          [--work-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_calibration import _peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "golden" / "digits_cnn"
STANDINS = {"minilm": "minilm", "bert-base": "bert-base", "encoder-tiny": "tiny"}  # bench name: encoder_standins size
CONV_STANDINS = ("mobilenetv3", "db-detector", "crnn")
MODELS = ("resnet50", "mobilenetv2", "bert", "digits", *STANDINS, *CONV_STANDINS)
DEFAULT_MODELS = ("resnet50", "mobilenetv2", "bert", "digits")
TRANSFORMERS = ("bert", *STANDINS)
TOOLS = ("qcompiler", "qcompiler-dynamic", "qcompiler-dynamic-smooth", "qcompiler-auto", "ort", "ort-rr",
         "ort-percentile", "ort-entropy", "ort-dynamic", "nncf")
DEFAULT_TOOLS = ("qcompiler", "ort", "ort-rr", "nncf")
ENCODER_TOOLS = ("qcompiler", "qcompiler-dynamic", "qcompiler-dynamic-smooth", "ort", "ort-dynamic", "nncf")
CONV_TOOLS = ("qcompiler", "ort", "ort-percentile", "ort-entropy", "nncf")
THREADS = (1, 2)
BLOCK_S = 0.25
SQNR_CHECK_DB = 0.05
AUTO_TOLERANCE = 1.0
COLUMNS = ("tool", "compile s", "peak RSS MB", "idle MB", "SQNR dB", "latency 1T", "latency 2T", "int share")
ENCODER_COLUMNS = ("tool", "compile s", "peak RSS MB", "idle MB", "SQNR dB", "cosine", "points", "MB", "size x",
                   "latency 1T", "latency 2T", "int share")
CONV_COLUMNS = ("tool", "compile s", "peak RSS MB", "idle MB", "SQNR dB", "vs float %", "task %", "points", "MB",
                "size x", "latency 1T", "latency 2T", "int share")


# -- the quantizers, each in its own process -------------------------------------------------


def _rows(npz: Path) -> list[dict[str, np.ndarray]]:
    """One feed per sample: row i of every array, keeping a batch axis of 1."""
    with np.load(npz) as data:
        return [{k: data[k][i:i + 1] for k in data.files} for i in range(len(data[data.files[0]]))]


def _run_qcompiler(pipeline: str | None):
    def run(model: Path, calib: Path, evaluate: Path, out: Path, transformer: bool) -> dict:
        return _qcompiler(model, None if pipeline == "dynamic" else calib, evaluate, out, pipeline)

    return run


def _qcompiler(model: Path, calib: Path | None, evaluate: Path, out: Path, pipeline: str | None) -> dict:
    import qcompiler

    compile_model = qcompiler.compile  # loads the driver, so the idle figure covers it
    idle = _peak_rss_mb()
    peaks: dict[str, float] = {}  # VmHWM at each progress message: "validating ..." is where compiling ends
    start = time.perf_counter()
    result = compile_model(str(model), None if calib is None else str(calib), eval=str(evaluate), target="ort-cpu",
                           pipeline=pipeline, log=lambda message: peaks.setdefault(message.split()[0], _peak_rss_mb()))
    call = time.perf_counter() - start
    result.save(out)
    report = result.report
    return {"compile_s": report.compile_seconds, "idle_mb": idle, "call_s": call,
            "peak_before_validation_mb": peaks.get("validating"), "pipeline": report.pipeline,
            "settings": report.settings, "report_sqnr_db": {m.name: m.sqnr_db for m in report.outputs},
            "report_integer_share": report.kernels.integer_share if report.kernels else None,
            "pass_seconds": [[record.name, record.seconds] for record in report.passes],
            "warnings": report.warnings}


def _run_qcompiler_auto(model: Path, calib: Path, evaluate: Path, out: Path, transformer: bool) -> dict:
    from qcompiler.auto import auto, save_auto

    idle = _peak_rss_mb()
    result = auto(str(model), str(calib), tolerance=AUTO_TOLERANCE, eval=str(evaluate))
    save_auto(result, out)
    return {"compile_s": result.seconds, "idle_mb": idle, "rung": result.chosen.rung if result.chosen else None,
            "rungs_tried": [attempt.rung for attempt in result.attempts]}


def _run_ort(reduce_range: bool, method: str = "MinMax"):
    def run(model: Path, calib: Path, evaluate: Path, out: Path, transformer: bool) -> dict:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              quant_pre_process, quantize_static)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.rows = iter(_rows(calib))

            def get_next(self) -> dict | None:
                return next(self.rows, None)

        idle = _peak_rss_mb()
        pre = out.with_name(f"{out.stem}.pre.onnx")
        reader = Reader()
        start = time.perf_counter()
        retried = None
        try:
            quant_pre_process(str(model), str(pre))
        except Exception as error:  # Hugging Face's position-id slice needs symbolic dims merged
            if "Incomplete symbolic shape inference" not in str(error):
                raise
            retried = "auto_merge=True"
            quant_pre_process(str(model), str(pre), auto_merge=True)
        middle = time.perf_counter()
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, calibrate_method=CalibrationMethod[method])
        end = time.perf_counter()
        pre.unlink()
        return {"compile_s": end - start, "idle_mb": idle, "preprocess_s": middle - start,
                "quantize_s": end - middle, "preprocess_retry": retried}

    return run


def _run_ort_dynamic(model: Path, calib: Path, evaluate: Path, out: Path, transformer: bool) -> dict:
    from onnxruntime.quantization import quantize_dynamic

    idle = _peak_rss_mb()
    start = time.perf_counter()
    quantize_dynamic(str(model), str(out))
    return {"compile_s": time.perf_counter() - start, "idle_mb": idle}


def _run_nncf(model: Path, calib: Path, evaluate: Path, out: Path, transformer: bool) -> dict:
    import nncf
    import onnx

    idle = _peak_rss_mb()
    rows = _rows(calib)
    start = time.perf_counter()
    proto = onnx.load(str(model))
    quantized = nncf.quantize(proto, nncf.Dataset(rows), subset_size=len(rows),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    seconds = time.perf_counter() - start
    onnx.save_model(quantized, str(out))
    return {"compile_s": seconds, "idle_mb": idle}


RUNNERS = {"qcompiler": _run_qcompiler(None), "qcompiler-dynamic": _run_qcompiler("dynamic"),
           "qcompiler-auto": _run_qcompiler_auto,
           "qcompiler-dynamic-smooth": _run_qcompiler("dynamic-smooth"), "ort": _run_ort(False),
           "ort-rr": _run_ort(True), "ort-percentile": _run_ort(False, "Percentile"),
           "ort-entropy": _run_ort(False, "Entropy"), "ort-dynamic": _run_ort_dynamic, "nncf": _run_nncf}


def child(tool: str, model: Path, calib: Path, evaluate: Path, out: Path, transformer: bool) -> None:
    """Quantize in this process and print one JSON line; numpy, onnx and onnxruntime load first (rule 1)."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    figures = RUNNERS[tool](model, calib, evaluate, out, transformer)
    print(json.dumps({**figures, "peak_mb": _peak_rss_mb()}))


def quantize(tool: str, model: Path, calib: Path, evaluate: Path, out: Path, transformer: bool) -> dict:
    """Run one tool in a fresh interpreter: its figures, or {"error": ...}."""
    if tool == "nncf" and not _importable("nncf"):
        return {"error": "nncf: not installed"}
    paths = [str(Path(p).resolve()) for p in (model, calib, evaluate, out)]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", tool, *(
        item for flag, path in zip(("--model", "--calib", "--eval", "--out"), paths) for item in (flag, path)
    )] + (["--transformer"] if transformer else [])
    # in a folder of its own: ORT's symbolic shape inference leaves the model it gave up on in the working directory
    with tempfile.TemporaryDirectory(prefix="bench-child.") as scratch:
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=scratch)
    if done.returncode == 0:
        return {**json.loads(done.stdout.strip().splitlines()[-1]), "model": str(out)}
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"error": f"failed: {last[:100]}"}


def say(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


def _importable(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


# -- latency, in its own process -------------------------------------------------------------


def latency_child(paths: list[str], feeds: Path, rounds: int) -> None:
    """Median milliseconds per model and thread count (rule 3), printed as one JSON line."""
    from qcompiler.ir.evaluate import open_session, time_runs

    feed = _rows(feeds)[0]
    medians: dict[str, list[float]] = {}
    for threads in THREADS:
        sessions = [open_session(path, threads=threads, lean=False, failure=f"ONNX Runtime cannot load {path}")
                    for path in paths]
        timed = time_runs(sessions, feed, labels=paths, repeat=sys.maxsize, budget_s=rounds * BLOCK_S)
        medians[str(threads)] = [latency.median_ms for latency in timed]
        del sessions
    print(json.dumps(medians))


def measure_latency(paths: list[str], feeds: Path, rounds: int) -> dict[int, list[float]] | str:
    """{threads: [median ms per path]}, or the error line when the latency process fails."""
    command = [sys.executable, __file__, "--latency-child", *paths, "--eval", str(feeds), "--repeat", str(rounds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:100]
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


# -- accuracy and integer share, here --------------------------------------------------------


def outputs(path: str, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output of the model over all feeds, joined on axis 0 (ONNX Runtime, default options)."""
    from qcompiler.ir.evaluate import open_session  # imported late: the idle memory figure excludes qcompiler

    session = open_session(path)
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(None, feed) for feed in feeds]
    return {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(names)}


def integer_share(path: str) -> float | None:
    """Share of Conv/Gemm/MatMul MACs in integer kernels (rule 4); None when the report cannot be made."""
    from qcompiler import ir
    from qcompiler.kernels import kernel_report

    try:
        return kernel_report(ir.load_model(path)).integer_share
    except Exception:  # a model our IR cannot read: the column says "?"
        return None


# -- one model ------------------------------------------------------------------------------


def prepare_case(name: str, size, work: Path, samples: int, evaluate: int, exporter: str = "classic",
                 conv_size: str = "standard"):
    """The model and data files (bench_models.Case), or None for a golden case that is not there yet."""
    import bench_models

    if name in CONV_STANDINS:
        import conv_standins

        return conv_standins.prepare(name, work, samples, evaluate, conv_size, log=say)
    if name in STANDINS:
        import encoder_standins

        case = encoder_standins.prepare(STANDINS[name], work, samples, evaluate, exporter)
        return replace(case, name=name)
    if name == "digits":
        return bench_models.stored_case(DIGITS, work, samples, evaluate) if (DIGITS / "model.onnx").exists() else None
    return bench_models.prepare(name, size, work, samples, evaluate)


def bench_model(case, tools: list[str], rounds: int) -> dict:
    """Every tool on one case: figures per tool, float latency, and per-output SQNR."""
    home = case.calib.parent
    transformer = case.name in TRANSFORMERS
    results: dict[str, dict] = {}
    for tool in tools:
        say(f"{case.name}: {tool} ...")
        results[tool] = quantize(tool, case.model, case.calib, case.eval, home / f"{tool}.onnx", transformer)
    done = [tool for tool in tools if "error" not in results[tool]]
    say(f"{case.name}: accuracy and integer share ...")
    from qcompiler.ir.evaluate import sqnr_db  # imported late: the idle memory figure excludes qcompiler

    feeds = _rows(case.eval)
    reference = outputs(str(case.model), feeds)
    for tool in done:
        got = outputs(results[tool]["model"], feeds)
        results[tool]["sqnr_db"] = {k: sqnr_db(reference[k], got[k]) for k in reference}
        results[tool]["integer_share"] = integer_share(results[tool]["model"])
        results[tool]["mb"] = _file_mb(results[tool]["model"])
        if case.name in STANDINS:
            results[tool]["encoder"] = encoder_accuracy(reference, got, feeds)
        if case.name in CONV_STANDINS:
            results[tool]["task"] = conv_task(case, reference, got)
    say(f"{case.name}: latency ...")
    load = os.getloadavg()[0]
    timed = measure_latency([str(case.model), *(results[t]["model"] for t in done)], case.eval, rounds)
    float_ms: dict[int, float] = {}
    if isinstance(timed, str):
        for tool in done:
            results[tool]["latency_error"] = timed
    else:
        float_ms = {threads: ms[0] for threads, ms in timed.items()}
        for i, tool in enumerate(done, start=1):
            results[tool]["latency_ms"] = {threads: ms[i] for threads, ms in timed.items()}
            results[tool]["latency_ratio"] = {threads: ms[i] / ms[0] for threads, ms in timed.items()}
    figures = {"model": str(case.model), "float_ms": float_ms, "load_average": [load, os.getloadavg()[0]],
               "float_mb": _file_mb(case.model), "encoder": case.name in STANDINS, "tools": results}
    if case.name in CONV_STANDINS:
        import conv_standins

        figures["conv"] = {"float": conv_task(case, reference, reference), "samples": len(feeds),
                           "measure": conv_standins.TASKS[case.name].measure}
    return figures


def conv_task(case, reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """A conv stand-in's task measure on `got` (conv_standins.score), against float's outputs and the labels."""
    import conv_standins

    output = conv_standins.TASKS[case.name].output
    return conv_standins.score(case.name, got[output], reference[output], conv_standins.load_labels(case))


def standin_figures(case) -> dict:
    """The float stand-in's measured activations (encoder_standins.measure) and the latency feed's length."""
    import encoder_standins

    with np.load(case.eval) as data:
        feeds = {k: data[k] for k in data.files}
    figures = encoder_standins.measure(case.model, feeds, encoder_standins.SIZES[STANDINS[case.name]].massive_from)
    return {"standin": figures, "latency_sequence": int(feeds["input_ids"].shape[1])}


def encoder_accuracy(reference: dict[str, np.ndarray], got: dict[str, np.ndarray],
                     feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Rule 6: last_hidden_state's SQNR over real tokens, the pooled embeddings' mean cosine and the points lost."""
    from qcompiler.ir.evaluate import sqnr_db

    real = np.concatenate([feed["attention_mask"] for feed in feeds]).astype(bool)
    want, have = (r["sentence_embedding"].astype(np.float64) for r in (reference, got))
    cosine = (want * have).sum(axis=1) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(have, axis=1), 1e-30)
    return {"sqnr_db": sqnr_db(reference["last_hidden_state"][real], got["last_hidden_state"][real]),
            "cosine": float(cosine.mean()), "points": float(100 * (1 - cosine.mean()))}


def _file_mb(path: str | Path) -> float:
    """The model's size on disk, its external data files included."""
    path = Path(path)
    extra = [p for p in path.parent.glob(f"{path.name}.data")]
    return (path.stat().st_size + sum(p.stat().st_size for p in extra)) / 2**20


# -- the table ------------------------------------------------------------------------------


def worst_sqnr(result: dict) -> float:
    """The SQNR a tool is judged by: an encoder's last_hidden_state over real tokens, else the worst output's."""
    return result["encoder"]["sqnr_db"] if "encoder" in result else min(result["sqnr_db"].values())


def columns(bench: dict) -> tuple[str, ...]:
    return CONV_COLUMNS if "conv" in bench else ENCODER_COLUMNS if bench.get("encoder") else COLUMNS


def _task_cells(task: dict[str, float], float_task: dict[str, float]) -> list[str]:
    """A conv stand-in's vs float %, task % and points lost on the labels."""
    return [f"{100 * task['vs_float']:.1f}", f"{100 * task['vs_labels']:.1f}",
            f"{100 * (float_task['vs_labels'] - task['vs_labels']):.1f}"]


def table_rows(bench: dict) -> Iterator[list[str]]:
    """The cells of each tool's row (COLUMNS, ENCODER_COLUMNS or CONV_COLUMNS for a stand-in), the float model first."""
    float_ms, encoder, conv = bench["float_ms"], bench.get("encoder"), bench.get("conv")
    sizes = [f"{bench['float_mb']:.2f}", "1.00"] if encoder or conv else []
    accuracy = ["1", "0"] if encoder else _task_cells(conv["float"], conv["float"]) if conv else []
    yield ["float", "-", "-", "-", "-", *accuracy, *sizes,
           *(f"1.00 ({float_ms[t]:.3g} ms)" if t in float_ms else "-" for t in THREADS), "0%"]
    for tool, r in bench["tools"].items():
        if "error" in r:
            yield [tool, r["error"]]
            continue
        ratios = r.get("latency_ratio", {})
        share = r.get("integer_share")
        extra = []
        if encoder:
            extra = [f"{r['encoder']['cosine']:.4f}", f"{r['encoder']['points']:.2f}"]
        if conv:
            extra = _task_cells(r["task"], conv["float"])
        if encoder or conv:
            extra += [f"{r['mb']:.2f}", f"{r['mb'] / bench['float_mb']:.2f}"]
        yield [tool, f"{r['compile_s']:.2f}", f"{r['peak_mb']:.0f}", f"{r['idle_mb']:.0f}", f"{worst_sqnr(r):.2f}",
               *extra, *(f"{ratios[t]:.2f}" if t in ratios else "?" for t in THREADS),
               "?" if share is None else f"{100 * share:.1f}%"]


def print_table(title: str, bench: dict) -> None:
    rows, heads = list(table_rows(bench)), columns(bench)
    full = [row for row in rows if len(row) == len(heads)]
    widths = [max(len(heads[i]), *(len(row[i]) for row in full)) for i in range(len(heads))]
    widths[0] = max(widths[0], *(len(row[0]) for row in rows))
    print(f"\n== {title} ==")
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(heads, widths))))
    for row in rows:
        if len(row) == 2:  # a tool that did not run: its reason spans the rest
            print(f"{row[0].ljust(widths[0])}  {row[1]}")
            continue
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    before, after = bench["load_average"]
    print(f"  1-minute load average {before:.2f} before the latency runs, {after:.2f} after")
    for line in notes(bench):
        print(f"  {line}")


def notes(bench: dict) -> Iterator[str]:
    """What the table does not show: ORT's split, qcompiler's own SQNR when it disagrees, latency failures."""
    for tool, r in bench["tools"].items():
        if "preprocess_s" in r:
            yield f"{tool}: quant_pre_process {r['preprocess_s']:.2f} s + quantize_static {r['quantize_s']:.2f} s"
        if r.get("preprocess_retry"):
            yield (f"{tool}: quant_pre_process failed on symbolic shape inference and was run again with "
                   f"{r['preprocess_retry']} (its figure includes both)")
        if "rungs_tried" in r:
            kept = f"kept {r['rung']}" if r["rung"] else "kept the float model (no rung within the tolerance)"
            yield f"{tool}: {kept}, of {', '.join(r['rungs_tried'])}"
        if "call_s" in r:
            yield f"{tool}: compile() call {r['call_s']:.2f} s with its validation"
        if r.get("peak_before_validation_mb"):
            yield f"{tool}: peak RSS {r['peak_before_validation_mb']:.0f} MB when validation starts"
        for name, own in r.get("report_sqnr_db", {}).items():
            ours = r["sqnr_db"].get(name)
            if ours is not None and abs(own - ours) > SQNR_CHECK_DB:
                yield f"{tool}: its report says {own:.2f} dB on {name}, this bench measures {ours:.2f} dB"
        if "latency_error" in r:
            yield f"{tool}: latency not measured: {r['latency_error']}"
    if "standin" in bench:
        import encoder_standins

        yield f"float model, measured: {encoder_standins.describe(bench['standin'])}"
        yield (f"SQNR dB: last_hidden_state over real tokens; cosine: sentence_embedding against float, mean over "
               f"samples; points = 100 x (1 - cosine); latency feed: 1 x {bench['latency_sequence']} tokens")
    if "conv" in bench:
        yield (f"task: {bench['conv']['measure']} over {bench['conv']['samples']} evaluation samples, against the "
               f"float model's outputs (vs float %) and the labels (task %); points = float's task % - the tool's")


def targets(name: str, bench: dict) -> dict[str, tuple[bool, float, float]]:
    """The goals qcompiler is held to against ORT's quantize_static (and, on ResNet-50, the float model).

    Each is (met, qcompiler's figure, the figure it is held to); no noise margin: a tie
    within noise can go either way, which the figures show.
    """
    checks: dict[str, tuple[bool, float, float]] = {}
    ours = bench["tools"].get("qcompiler", {})
    if name == "resnet50" and "latency_ratio" in ours:
        checks["qcompiler >= 2x faster than float (1T ratio)"] = (ours["latency_ratio"][1] <= 0.5,
                                                                  ours["latency_ratio"][1], 0.5)
    for mine_tool, their_tool, prefix in (("qcompiler", "ort", ""), ("qcompiler-dynamic", "ort-dynamic", "dynamic "),
                                          ("qcompiler-dynamic-smooth", "ort-dynamic", "dynamic-smooth "),
                                          ("qcompiler-dynamic-smooth", "nncf", "dynamic-smooth ")):
        ours, theirs = bench["tools"].get(mine_tool, {}), bench["tools"].get(their_tool, {})
        if "error" in ours or "error" in theirs or not ours or not theirs:
            continue
        pairs = {f"{prefix}SQNR >= {their_tool}'s (dB)": (worst_sqnr(ours), worst_sqnr(theirs), 1),
                 f"{prefix}compile time <= {their_tool}'s (s)": (ours["compile_s"], theirs["compile_s"], -1)}
        if "latency_ratio" in ours and "latency_ratio" in theirs:
            pairs.update({f"{prefix}latency <= {their_tool}'s ({t}T ratio)":
                          (ours["latency_ratio"][t], theirs["latency_ratio"][t], -1) for t in THREADS})
        for goal, (mine, figure, sign) in pairs.items():
            checks[goal] = (sign * mine >= sign * figure, mine, figure)
    return checks


# -- the driver -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS),
                        help=f"default: {' '.join(DEFAULT_MODELS)}; the encoder stand-ins {', '.join(STANDINS)} "
                             f"and the conv stand-ins {', '.join(CONV_STANDINS)} are run when named")
    parser.add_argument("--tools", nargs="+", choices=TOOLS,
                        help=f"default: {' '.join(DEFAULT_TOOLS)}, {' '.join(ENCODER_TOOLS)} on the encoder "
                             f"stand-ins and {' '.join(CONV_TOOLS)} on the conv stand-ins")
    parser.add_argument("--exporter", choices=("classic", "dynamo"), default="classic",
                        help="the torch exporter the encoder stand-ins go through (default classic)")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--eval-samples", type=int, default=16, help="evaluation samples, drawn apart")
    parser.add_argument("--repeat", type=int, help="latency rounds, each model's median over them (default 7, quick 3)")
    parser.add_argument("--quick", action="store_true",
                        help="small models: width 0.25 at 64x64, a 2-layer BERT, the conv stand-ins' tiny size")
    parser.add_argument("--width", type=float, help="CNN width multiplier (overrides the size)")
    parser.add_argument("--resolution", type=int, help="CNN input size in pixels (overrides the size)")
    parser.add_argument("--work-dir", type=Path, help="cache of models and data (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--latency-child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--calib", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--eval", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--transformer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model, args.calib, args.eval, args.out, args.transformer)
        return 0
    if args.latency_child:
        latency_child(args.latency_child, args.eval, args.repeat)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        run(args, args.work_dir or Path(scratch))
    return 0


def run(args: argparse.Namespace, work: Path) -> None:
    import bench_models

    size = bench_models.QUICK if args.quick else bench_models.FULL
    size = replace(size, width=args.width or size.width, resolution=args.resolution or size.resolution)
    rounds = args.repeat or (3 if args.quick else 7)
    report = {"config": {"samples": args.samples, "eval_samples": args.eval_samples, "repeat": rounds,
                         "size": vars(size), "tools": args.tools, "exporter": args.exporter, "block_s": BLOCK_S},
              "models": {}}
    load = os.getloadavg()[0]
    report["config"]["load_average_at_start"] = load
    print(f"{os.cpu_count()} cores, 1-minute load average {load:.2f} at the start (other work skews latency)")
    for name in args.models:
        say(f"{name}: preparing ...")
        case = prepare_case(name, size, work, args.samples, args.eval_samples, args.exporter,
                            "tiny" if args.quick else "standard")
        if case is None:
            print(f"\n== {name} ==\nskipped: {DIGITS.relative_to(ROOT)}/model.onnx is missing")
            continue
        tools = args.tools or list(ENCODER_TOOLS if name in STANDINS else CONV_TOOLS if name in CONV_STANDINS
                                   else DEFAULT_TOOLS)
        bench = bench_model(case, tools, rounds)
        if name in STANDINS:
            bench.update(standin_figures(case))
        bench["targets"] = targets(name, bench)
        title = (f"{case.calib.parent.name}: {args.samples} calibration / {args.eval_samples} evaluation samples, "
                 f"latency median of {rounds} rounds, ratios to float")
        print_table(title, bench)
        for goal, (met, mine, theirs) in bench["targets"].items():
            print(f"  target {goal}: {'yes' if met else 'NO'} ({mine:.3g} vs {theirs:.3g})")
        report["models"][name] = bench
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
