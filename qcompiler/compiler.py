"""compile(): a float model in; a quantized model and a measured report out.

1. The model is a path (.onnx or .qir), ONNX bytes or ModelProto, an ir.Model
   (compiled in place), or a torch.nn.Module with `example_inputs` (and optionally
   `dynamic_shapes`), exported by `qcompiler.torch.export`. A model that already holds
   QuantizeLinear/DequantizeLinear or QLinear* nodes is refused unless `on_quantized="keep"`: then its pairs keep their
   parameters (place-qdq leaves values in QDQ form alone) and the rest is quantized.
2. Settings: arguments beat the recipe, which beats defaults (target ort-cpu; the
   `int8` pipeline, but for a transformer on ort-cpu, where a normalization feeds a
   MatMul or Gemm, `dynamic-smooth`, or `dynamic` without calibration data: on encoders
   with trained-like outliers it was both more accurate and faster than static int8,
   29.7 against 8.1 dB at 0.42x against 0.53x float's latency, tools/bench.py on the
   MiniLM-sized stand-in; the report's settings say which and why). A LayerNorm that
   exports below opset 17 spell out counts (found on a fused copy, as fuse finds it), and
   a net whose Convs hold most of the weights stays static (dynamic quantization would
   leave those Convs float). `mode` names a
   pipeline: static (int8), dynamic, fp16, int4. The
   target (a name, or a `passes.Target` for another machine's CPU flags) and the
   recipe's overrides go on the pass context; the recipe's pass options fill the
   pipeline's steps (`Recipe.steps`). `qc opt --pipeline P --recipe R --target T` runs
   exactly this. `executor` ("local", the default, "ray", "ray://ADDRESS" or a
   `passes.Executor`) goes on the context too: where passes run the work they were
   asked to split (`calibrate{jobs=N}`, `assign-precision{jobs=N}`).
3. Every step is a pass of the pipeline: the named pipelines start with legalize-opset
   (models below opset 13 converted, checked on the first data feed),
   freeze-weight-inputs (initializers listed as graph inputs become constants) and
   apply-overrides (the recipe's node marks), so dumps and reproducers see them too.
4. The pipeline runs with the IR verifier after each pass; `dump_dir` keeps the IR
   after every pass, and `crash_dir` receives a reproducer (the IR before the pass that
   raised, and the pipeline left to run) when a pass crashes.
5. Validation: the float and quantized models run in ONNX Runtime on all of the `eval`
   data, or when none is given on the first `CALIBRATION_CHECK_ROWS` rows of the
   calibration data, with a warning (figures on the data the scales were fitted to
   flatter the result; a bounded sample, so a compile costs little beyond calibration); the report holds per-output SQNR, cosine, max
   error, top-1 agreement, the task measure that fits the output (qcompiler/acceptance.py,
   read from the float graph before any pass) and its figure, sizes, Q/DQ counts, the integer kernels ONNX Runtime chose,
   and a benchmark of float against quantized (qcompiler/bench.py: latency and throughput
   at batch 1 and 8, on one thread and on all) from the first evaluation feed, with a
   warning where the quantized model is slower. Around calibrate, qcompiler/diagnostics.py
   checks the data (too few or repeated calibration rows, evaluation data outside the
   calibrated ranges); NaN/Inf in the quantized outputs are warned about too.
   Memory stays near one copy of the weights: the float model is exported before the
   passes as an `ir.onnx_export.ModelFile` (weights mapped from the source file are
   linked, not copied), the quantized one after, and ONNX Runtime reads both from disk.
6. `reference` (any model compile takes) replaces the input as the float side of
   validation: a model that arrives quantized (on_quantized="keep", from QAT or another
   tool) is re-validated against its float original instead of against itself.
7. `observations` (passes/analyses/observers.py) is shared by compiles of one model on
   one data set, as auto's rungs are: what one compile's calibrate or smooth-quant
   measured is not measured again by the next.
"""

from __future__ import annotations

import io
import operator
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompiler import ir, passes
from qcompiler.bench import benchmark, quantized_kind
from qcompiler.data import CalibrationData, CalibrationDataError, InputSpec, input_specs, open_calibration_data
from qcompiler.debug import record_float_names
from qcompiler.diagnostics import DataChecks, nonfinite_warnings
from qcompiler.ir.evaluate import first_rows
from qcompiler.ir.fileio import release_mapped_pages
from qcompiler.ir.naming import unique_names
from qcompiler.ir.onnx_export import ModelFile
from qcompiler.kernels import kernel_report
from qcompiler.modelio import read_model
from qcompiler.passes.analyses.observers import Observations
from qcompiler.passes.infra.pipeline import Pipeline
from qcompiler.passes.infra.progress import Progress
from qcompiler.passes.analyses.rules import has_rule, is_float
from qcompiler.recipe import Recipe
from qcompiler.report import CompileReport, PassRecord
from qcompiler.acceptance import Measure, measures
from qcompiler.passes.analyses.rules import norm_feeds_linear
from qcompiler.schemes import linear_schemes
from qcompiler.validate import compare_models

MODES = {"static": "int8", "dynamic": "dynamic", "fp16": "fp16", "int4": "int4"}  # mode -> named pipeline
CALIBRATION_CHECK_ROWS = 64  # rule 5: rows of calibration data validated when no evaluation data is given
_BENCH_BUDGET_S = 0.1  # per setting (batch size x thread count), so the benchmark adds little to a compile
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_QUANTIZED_OPS = _QDQ_OPS | {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                             "MatMulNBits", "GatherBlockQuantized"}


@dataclass
class CompileResult:
    """The quantized model (IR) and the report of how it was made and how it measures."""

    model: ir.Model
    report: CompileReport

    def save(self, path: str | Path) -> None:
        """Write the model as ONNX (atomically: a failed write leaves no partial file)."""
        ir.save_model(self.model, path)


def compile(model: Any, calib: Any = None, *, recipe: Recipe | str | Path | dict | None = None,
            pipeline: str | None = None, target: str | passes.Target | None = None, eval: Any = None,
            dump_dir: str | Path | None = None, on_quantized: str = "error",
            example_inputs: Any = None, dynamic_shapes: Any = None, mode: str | None = None,
            reference: Any = None, log: Callable[[str], None] | None = None,
            crash_dir: str | Path | None = None, executor: str | passes.Executor | None = None,
            observations: Observations | None = None) -> CompileResult:
    """Quantize `model` with calibration data `calib`; see the module docstring for each argument's role."""
    say = log or (lambda message: None)
    pipeline = _mode_pipeline(mode, pipeline)
    start = time.perf_counter()
    job = prepare(model, calib, recipe=recipe, pipeline=pipeline, target=target, eval=eval, on_quantized=on_quantized,
                  example_inputs=example_inputs, dynamic_shapes=dynamic_shapes, reference=reference)
    model, report = job.model, job.report
    timing = passes.Timing(stream=io.StringIO())
    checks = DataChecks()
    instruments: list[passes.Instrument] = [passes.Verifier(), timing, checks]
    if dump_dir is not None:
        instruments.append(passes.DumpDir(Path(dump_dir)))
    if crash_dir is not None:
        instruments.append(passes.CrashReproducer(Path(crash_dir)))
    context = job.context(instruments, executor, observations)
    say(f"running {report.pipeline}")
    result = passes.PassManager(job.steps).run(model, context)
    report.settings.update(context.report.get("settings", {}))
    report.warnings.extend([*result.warnings, *checks.warnings])
    report.precision = context.report.get("assign-precision")
    report.weight_only = context.report.get("weight-only")
    report.warnings.extend((report.weight_only or {}).get("warnings", []))
    report.embeddings = context.report.get("quantize-embeddings")
    report.smoothing = context.report.get("smooth-quant")
    report.ranges = context.report.get("choose-ranges")
    report.linears = linear_schemes(model, report.smoothing)
    report.passes = [PassRecord(name, seconds, changed, dict(stats)) for name, seconds, changed, stats in timing.rows]
    report.compile_seconds = time.perf_counter() - start
    record_float_names(model, job.float_names)
    release_mapped_pages()  # the passes read the float weights; validation reads them again from their file
    quant_file = ModelFile(model)
    _describe(model, job.float_file, quant_file, report)
    _validate(job, model, quant_file, say)
    return CompileResult(model, report)


@dataclass
class Job:
    """A model read, checked and converted, its settings resolved and its data opened: ready for passes."""

    model: ir.Model
    recipe: Recipe
    target: passes.Target
    report: CompileReport
    steps: Pipeline
    float_file: ModelFile  # the float model as ONNX, exported before any pass (weights linked, not copied)
    specs: list[InputSpec]
    calibration: CalibrationData | None
    held_out: CalibrationData | None
    float_names: dict[ir.Value, str]  # each value's name in float_file, for debug's pairing
    measures: dict[str, Measure]  # how each output's task answer is judged, read from the float graph

    @property
    def evaluation(self) -> CalibrationData | None:
        """What validation runs on: the held-out data, else the calibration data."""
        return self.held_out if self.held_out is not None else self.calibration

    def context(self, instruments: list[passes.Instrument], executor: str | passes.Executor | None = None,
                observations: Observations | None = None) -> passes.PassContext:
        return passes.PassContext(target=self.target, overrides=self.recipe.overrides,
                                  calibration_data=self.calibration, evaluation_data=self.held_out,
                                  instruments=instruments, executor=as_executor(executor),
                                  observations=observations)


def prepare(model: Any, calib: Any = None, *, recipe: Recipe | str | Path | dict | None = None,
            pipeline: str | None = None, target: str | passes.Target | None = None, eval: Any = None,
            on_quantized: str = "error", example_inputs: Any = None, dynamic_shapes: Any = None,
            reference: Any = None) -> Job:
    """Rules 1-2 (and 6) of the module, and the data opened with its first batch checked."""
    recipe = _recipe(recipe)
    model, source = _read(model, example_inputs, dynamic_shapes)
    _check_not_quantized(model, source, on_quantized)
    target = as_target(target or recipe.target)
    report = CompileReport(source=source, target=target.name, pipeline="")
    specs = input_specs(model)
    calibration = _checked_data(calib, specs, "calibration") if calib is not None else None
    held_out = _checked_data(eval, specs, "evaluation") if eval is not None else None
    for role, data in (("calibration data", calibration), ("evaluation data", held_out)):
        if data is not None:
            report.settings[role] = data.describe()
    if pipeline is None and recipe.pipeline is None:
        pipeline, report.settings["pipeline"] = default_pipeline(model, target, calibration is not None)
    steps = recipe.steps(pipeline)
    report.pipeline = str(steps)
    float_model = model if reference is None else load_for_compile(reference)
    float_file = ModelFile(float_model)
    if reference is not None:  # rule 6: measure against the float original, not the (quantized) input
        named = reference if isinstance(reference, str | Path) else "the given float model"
        report.settings["reference"] = f"validated against {named}"
    float_names = unique_names(model.graph)
    return Job(model, recipe, target, report, steps, float_file, specs, calibration, held_out, float_names,
               measures(float_model))


def as_target(target: str | passes.Target | None) -> passes.Target:
    """A target name (ort-cpu by default) as the Target for this machine; a Target as it is."""
    return target if isinstance(target, passes.Target) else passes.Target.named(target or "ort-cpu")


def as_executor(executor: str | passes.Executor | None) -> passes.Executor:
    """An executor's text ("local", "ray", "ray://ADDRESS"; local processes by default) as the Executor; one as it is."""
    return passes.executor_named(executor or "local") if executor is None or isinstance(executor, str) else executor


def _recipe(recipe: Recipe | str | Path | dict | None) -> Recipe:
    if recipe is None:
        return Recipe()
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    return Recipe.load(recipe)


def default_pipeline(model: ir.Model, target: passes.Target, calibrated: bool) -> tuple[str, str]:
    """Rule 2's choice where neither argument nor recipe names a pipeline: the pipeline, and why."""
    if target.name == "ort-cpu" and transformer_layers(model) and _linear_weight_share(model) >= 0.5:
        why = ("normalizations feed Linears (a transformer): ONNX Runtime's dynamic kernels with smoothed "
               "outliers beat static int8 there; --mode static for static int8")
        if calibrated:
            return "dynamic-smooth", f"dynamic-smooth: {why}"
        return "dynamic", f"dynamic (no calibration data to smooth with): {why}"
    return "int8", "int8: static, the default"


def transformer_layers(model: ir.Model) -> bool:
    """Whether a normalization feeds a MatMul or Gemm (rules.norm_feeds_linear), a LayerNorm that older
    exports spell out included: those are found as fuse finds them, on a fused copy of the model."""
    if norm_feeds_linear(model):
        return True
    if not any(node.op_type == "ReduceMean" for node in model.graph.nodes):
        return False
    fused = ir.clone_model(model)
    try:
        passes.PassManager("canonicalize,fuse").run(fused, passes.PassContext())
    except (passes.PassError, ir.IRError):  # the compile itself will say what is wrong with the model
        return False
    return norm_feeds_linear(fused)


def _linear_weight_share(model: ir.Model) -> float:
    """The share of Conv, MatMul and Gemm weight elements that MatMul and Gemm hold: a conv net with a few
    attention blocks (an OCR recognizer) is a conv net, whose Convs dynamic quantization leaves float."""
    sizes = {"Conv": 0, "Linear": 0}
    for node in model.graph.nodes:
        if node.op_type in ("Conv", "MatMul", "Gemm") and not node.domain:
            weight = node.inputs[1] if len(node.inputs) > 1 else None
            if weight is not None and weight.is_const:
                sizes["Conv" if node.op_type == "Conv" else "Linear"] += int(np.prod(weight.shape or ()))
    total = sizes["Conv"] + sizes["Linear"]
    return sizes["Linear"] / total if total else 0.0


def _mode_pipeline(mode: str | None, pipeline: str | None) -> str | None:
    """A mode is a name for a pipeline (MODES); giving both is ambiguous."""
    if mode is None:
        return pipeline
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if pipeline is not None:
        raise ValueError(f"give a mode or a pipeline, not both (mode {mode!r} is the pipeline {MODES[mode]!r})")
    return MODES[mode]


def load_for_compile(model: Any, example_inputs: Any = None, dynamic_shapes: Any = None) -> ir.Model:
    """Any model compile() takes, as IR (rule 1): for callers that compile one model several ways."""
    return _read(model, example_inputs, dynamic_shapes)[0]


def _read(model: Any, example_inputs: Any, dynamic_shapes: Any) -> tuple[ir.Model, str]:
    if _is_torch_module(model):
        from qcompiler import torch as torch_frontend

        if example_inputs is None:
            raise TypeError("compile() of a torch module needs example_inputs: a tensor or a tuple of the "
                            "arguments its forward takes")
        return torch_frontend.export(model, example_inputs, dynamic_shapes=dynamic_shapes), type(model).__name__
    if example_inputs is not None or dynamic_shapes is not None:
        raise TypeError("example_inputs and dynamic_shapes are for torch modules; this model is already ONNX")
    if isinstance(model, ir.Model):
        return model, model.graph.name or "model"
    if isinstance(model, str | Path):
        return read_model(model), str(model)
    if isinstance(model, bytes | onnx.ModelProto):
        return ir.load_model(model), "model"
    raise TypeError("compile() takes a path, ONNX bytes, a ModelProto, an ir.Model or a torch.nn.Module, "
                    f"not {type(model).__name__}")


def _is_torch_module(model: Any) -> bool:
    """Without importing torch: a program that never loaded it cannot hold a module."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _check_not_quantized(model: ir.Model, source: str, on_quantized: str) -> None:
    if on_quantized not in ("error", "keep"):
        raise ValueError(f"on_quantized must be 'error' or 'keep', not {on_quantized!r}")
    found = [n for n in model.graph.nodes if n.op_type in _QUANTIZED_OPS]
    if found and on_quantized == "error":
        kinds = ", ".join(sorted({n.op_type for n in found}))
        raise ir.IRError(f"{source} is already quantized ({len(found)} nodes: {kinds}; first: "
                         f"{found[0].name or found[0].op_type!r}): compile with on_quantized='keep' "
                         f"(--on-quantized keep) to keep its parameters and quantize the rest")


def _describe(model: ir.Model, float_file: ModelFile, quant_file: ModelFile,
              report: CompileReport) -> None:
    ops = Counter(n.op_type for n in model.graph.nodes)
    report.qdq_nodes = {op: ops[op] for op in sorted(_QDQ_OPS)}
    report.ops_without_rule = dict(Counter(n.op_type for n in model.graph.nodes
                                           if n.op_type not in _QUANTIZED_OPS | {"Cast"} and not has_rule(n)
                                           and any(is_float(v) for v in n.outputs)
                                           and not all(v is None or v.is_const for v in n.inputs)))
    report.size_bytes = {"float": float_file.size, "quantized": quant_file.size}


def _checked_data(source: Any, specs, role: str) -> CalibrationData:
    """The data, with its first batch read now: a mismatch with the model fails before any work.

    A one-shot iterator is refused: calibration and validation each read the data again.
    """
    data = open_calibration_data(source, specs)
    if not data.replayable:
        raise CalibrationDataError(repr(data), f"the {role} data is a one-shot iterator, and compile reads it more "
                                   "than once (calibration, validation); pass a list, or a function returning "
                                   "a fresh iterator (e.g. lambda: make_batches())")
    next(iter(data), None)
    return data


def _validate(job: Job, model: ir.Model, quant_file: ModelFile, say: Callable[[str], None]) -> None:
    report, evaluation, on_calibration = job.report, job.evaluation, job.held_out is None
    if evaluation is None:
        report.warnings.append("not validated: no evaluation or calibration data")
        return
    report.validation_data = "calibration data" if on_calibration else "evaluation data"
    say(f"validating on the {report.validation_data}")
    first: list[dict] = []
    batches = operator.length_hint(evaluation) or None  # a generator or function: unknown until read
    feeds = first_rows(evaluation, CALIBRATION_CHECK_ROWS) if on_calibration else evaluation
    report.outputs = compare_models(job.float_file, quant_file, _recording_first(feeds, first),
                                    progress=Progress("validate", None if on_calibration else batches, "batches"),
                                    measures=job.measures)
    if on_calibration:
        report.warnings.append(f"validated on the first {report.outputs[0].samples} rows of the calibration data: "
                               "pass evaluation data held out from calibration (--eval) for figures that are not "
                               "flattered")
    report.warnings.extend(nonfinite_warnings(report.outputs))
    report.kernels = kernel_report(model, exported=quant_file)
    say("benchmarking float against quantized")
    report.bench = benchmark(job.float_file, quant_file, first[0], job.specs, size_bytes=report.size_bytes,
                             quantized=quantized_kind(model), budget_s=_BENCH_BUDGET_S)
    report.latency = report.bench.settings[0]  # batch 1 (or the fixed batch), 1 thread
    report.warnings.extend(report.bench.warnings())


def _recording_first(data: CalibrationData, first: list[dict]) -> Iterator[dict]:
    """The feeds of `data`, keeping the first in `first` for the benchmark."""
    for feeds in data:
        if not first:
            first.append(feeds)
        yield feeds
