"""The `qc` command line.

Errors in the user's input print one line, `qc: error: ...`, and exit 1; usage
errors exit 2 (argparse's convention). Anything else is a bug in qcompiler: it prints one
line, `qc COMMAND: internal error ...`, naming the pass (with its reproducer) or the
function where it was raised, and exits 2. No traceback reaches the terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from qcompiler import __version__, ir, passes
from qcompiler.analyze import plot_table
from qcompiler.analyze import sensitivity as sensitivity_table
from qcompiler.auto import AutoError, auto, parse_duration, save_auto
from qcompiler.bench import benchmark, file_bytes, quantized_kind, random_feeds
from qcompiler.compiler import MODES
from qcompiler.compiler import compile as compile_model
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.debug import annotate, record_float_names, value_errors
from qcompiler.ir.fileio import atomic_output
from qcompiler.ir.naming import unique_names
from qcompiler.modelio import check_writable, read_model, write_dump, write_text
from qcompiler.passes.infra.target import TARGET_NAMES
from qcompiler.recipe import DEFAULT_PIPELINE, Recipe, overrides_toml
from qcompiler.tracking import AutoTracker


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    command = args.run.__name__.strip("_")
    try:
        return args.run(args)
    except passes.PassCrash as err:
        print(f"qc {command}: internal error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (ir.IRError, OSError, passes.PassError, passes.PipelineError, passes.PluginError) as err:
        print(f"qc: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qc: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line that says where, never a traceback
        print(f"qc {command}: internal error in {_raised_at(err)}: {type(err).__name__}: {_one_line(err)}",
              file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _raised_at(err: BaseException) -> str:
    """The innermost frame of qcompiler's own code the exception passed through: function, file, line."""
    homes = [Path(module.__file__).resolve().parent for module in (sys.modules[__name__], ir, passes)]
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = Path(frame.filename).resolve()
        home = next((h for h in homes if path.is_relative_to(h)), None)
        if home is not None:
            return f"{frame.name} ({home.name}/{path.relative_to(home)}:{frame.lineno})"
    return "qc"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qc", description="qcompiler: a quantization compiler for ONNX models."
    )
    parser.add_argument("--version", action="version", version=f"qc {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    dump = commands.add_parser(
        "dump", help="print the IR of a model as text",
        description="Print a model (.onnx or .qir) as text IR. Written to a file (-o X.qir), its large "
        "constants go to X.npz beside it and the dump parses back to the same model.",
    )
    dump.add_argument("model", help="an .onnx or .qir file")
    dump.add_argument("-o", "--output", help="write the text here instead of standard output")
    dump.add_argument(
        "--weights", metavar="inline|summary|FILE.npz",
        help="inline: every constant in full; summary: large constants as a summary only (does not parse "
        "back); FILE.npz: summaries in the text, data saved to FILE.npz (default: OUTPUT.npz beside the "
        "-o file, so a written dump parses back; summary on standard output)",
    )
    _add_import_options(dump)
    dump.set_defaults(run=_dump)

    export = commands.add_parser(
        "export", help="write a text IR (or ONNX) model as ONNX",
        description="Parse a .qir file (with its weights file) and write it as an ONNX model, "
        "checked by onnx.checker.",
    )
    export.add_argument("model", help="a .qir (or .onnx) file")
    export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    export.add_argument("--weights", metavar="FILE.npz",
                        help="the weights file of a dump with elided constants (default: the one the dump names)")
    export.add_argument("--external-data", action="store_true",
                        help="store tensors in OUTPUT.data (automatic above 2 GB)")
    _add_import_options(export)
    export.set_defaults(run=_export)

    compile_ = commands.add_parser(
        "compile", help="quantize a model: calibrate, place Q/DQ, fold weights, validate",
        description="Quantize MODEL with calibration data and write it as ONNX in QDQ form. The float "
        "and quantized models are then run side by side in ONNX Runtime and a report is printed.",
    )
    compile_.add_argument("model", help="the float model: .onnx (or .qir)")
    compile_.add_argument("--calib", metavar="DATA",
                          help="calibration data: .npz (samples on axis 0), .npy, or a folder of .npz/.npy files "
                          "(needed by static modes; dynamic, fp16 and int4 need none)")
    compile_.add_argument("-o", "--output", required=True, help="the quantized .onnx file to write")
    compile_.add_argument("--recipe", metavar="FILE.toml", help="pass options and per-op/per-node overrides")
    compile_.add_argument("--pipeline", help=f"passes to run (default: the recipe's, else {DEFAULT_PIPELINE!r})")
    _add_target_options(compile_)
    compile_.add_argument("--eval", metavar="DATA", help="held-out data to validate on (default: the calibration data)")
    compile_.add_argument("--report", metavar="FILE.json", help="write the full report as JSON")
    compile_.add_argument("--dump-dir", metavar="DIR", help="write NNN_<pass>.qir after every pass")
    compile_.add_argument("--on-quantized", choices=["error", "keep"], default="error",
                          help="a model that already holds Q/DQ nodes: refuse it (default), or keep its "
                          "parameters and quantize the rest")
    compile_.add_argument("--timing", action="store_true", help="print a per-pass time and statistics table")
    compile_.add_argument("--crash-dir", metavar="DIR", default=".",
                          help="where a crashing pass leaves its reproducer (default: the current folder)")
    compile_.add_argument("--min-sqnr", type=float, metavar="DB",
                          help="mixed precision: promote the layers that hurt most (int16 activations, fp16, "
                          "fp32) until every output's SQNR reaches DB; runs the 'mixed' pipeline unless "
                          "--pipeline is given")
    compile_.add_argument("--save-overrides", metavar="FILE.toml",
                          help="write the precision chosen per layer as recipe overrides, to review, edit "
                          "and pin with --recipe")
    compile_.add_argument("--reference", metavar="FLOAT.onnx",
                          help="validate against this float model instead of the input (for a model that "
                          "arrives quantized: --on-quantized keep)")
    compile_.add_argument("--mode", choices=sorted(MODES), help="a named way to quantize: static (int8 with "
                          "calibration, the default), dynamic (activations quantized at run time), fp16, "
                          "int4 (weight-only)")
    compile_.add_argument("--auto", action="store_true",
                          help="try dynamic, static (two observers), static+smooth-quant and, if none is good "
                          "enough, mixed precision; keep the fastest within --tolerance")
    compile_.add_argument("--tolerance", type=float, metavar="T", default=1.0,
                          help="with --auto: accuracy that may go per output, in percent of the measure that "
                          "fits it (top-1 or per-position argmax agreement, thresholded decisions, cosine "
                          "x 100; default 1.0), or in the --metric's units")
    compile_.add_argument("--time-budget", metavar="DURATION", default="10m",
                          help="with --auto: how long the walk may take, e.g. 10m, 90s, 1h (default 10m); rungs "
                          "estimated not to fit are skipped and the best so far is kept")
    compile_.add_argument("--metric", metavar="FILE.py:fn",
                          help="with --auto: a function of the outputs over the evaluation rows, higher is better")
    compile_.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                          help="with --auto: log each rung as an MLflow run under one run for the walk, to the "
                          "tracking store URI (default: sqlite:///mlflow.db here; needs qcompiler[mlflow])")
    compile_.add_argument("--search", action="store_true",
                          help="with --auto: when no cheap rung meets the tolerance, also try the rungs that search "
                          "on the data (choose-ranges, adaround) before mixed precision; each gets a quarter of the "
                          "time left")
    compile_.add_argument("--require", action="store_true",
                          help="with --auto: exit 1 when no rung meets the tolerance (default: keep the float "
                          "model and exit 0)")
    _add_executor_option(compile_, "the shares of work that passes split (calibrate{jobs=N}, assign-precision{jobs=N})")
    _add_plugin_option(compile_)
    compile_.set_defaults(run=_compile)

    sensitivity = commands.add_parser(
        "sensitivity", help="measure how much quantizing each layer costs the model's outputs",
        description="Calibrate MODEL, then for every quantizable layer (or fused group) measure the "
        "output SQNR with only that layer in int8 and with everything in int8 but it, each a real "
        "ONNX Runtime run of the emitted model. Most sensitive first.",
    )
    sensitivity.add_argument("model", help="the float model: .onnx (or .qir)")
    sensitivity.add_argument("--calib", metavar="DATA", required=True, help="calibration data (as for compile)")
    sensitivity.add_argument("--eval", metavar="DATA", help="held-out data to measure on (default: the calibration data)")
    sensitivity.add_argument("--recipe", metavar="FILE.toml", help="pass options and overrides, as for compile")
    sensitivity.add_argument("--pipeline", help=f"the compile pipeline (default: the recipe's, else {DEFAULT_PIPELINE!r})")
    _add_target_options(sensitivity)
    sensitivity.add_argument("--samples", type=int, default=256, metavar="N", help="evaluation rows used (default 256)")
    sensitivity.add_argument("--jobs", type=int, default=1, metavar="N",
                             help="shares of the variants, run in parallel by --executor (default 1)")
    _add_executor_option(sensitivity, "the --jobs shares")
    sensitivity.add_argument("--cache", metavar="FILE.json", help="reuse the table stored here when nothing changed")
    sensitivity.add_argument("--top", type=int, default=0, metavar="N", help="rows to print (default: all)")
    sensitivity.add_argument("--json", metavar="OUT.json", help="write the table as JSON")
    sensitivity.add_argument("--plot", metavar="OUT.png", help="draw the table (needs matplotlib: qcompiler[plot])")
    _add_plugin_option(sensitivity)
    sensitivity.set_defaults(run=_sensitivity)

    list_passes = commands.add_parser(
        "passes", help="list the passes, their options and the named pipelines",
        description="Every registered pass (built-in and from plugins) with its summary and options.",
    )
    _add_plugin_option(list_passes)
    list_passes.set_defaults(run=_passes)

    opt = commands.add_parser(
        "opt", help="run a pass pipeline over a model",
        description='Run passes over a model: qc opt IN.qir --pipeline "canonicalize,fuse" -o OUT.qir. '
        "The output format follows the file name (.qir or .onnx); without -o the text goes to stdout.",
    )
    opt.add_argument("model", help="an .onnx or .qir file")
    opt.add_argument("--pipeline", required=True, help="passes to run, e.g. 'canonicalize,fuse{patterns=conv-bn}'")
    opt.add_argument("-o", "--output", help="the .qir or .onnx file to write")
    opt.add_argument("--weights", metavar="inline|summary|FILE.npz",
                     help="constants in a .qir output (default: OUTPUT.npz beside it, so it parses back)")
    opt.add_argument("--print-ir-before", metavar="all|PASS", action="append", default=[],
                     help="print the IR to stderr before this pass (repeatable)")
    opt.add_argument("--print-ir-after", metavar="all|PASS", action="append", default=[],
                     help="print the IR to stderr after this pass (repeatable)")
    opt.add_argument("--print-ir-after-change", action="store_true",
                     help="with --print-ir-after: only when the pass changed the model")
    opt.add_argument("--recipe", metavar="FILE.toml", help="pass options and overrides, as for compile")
    _add_target_options(opt)
    opt.add_argument("--calib", metavar="DATA",
                     help="calibration data for the calibrate pass: .npz (samples on axis 0), .npy, "
                     "or a folder of .npz/.npy files")
    opt.add_argument("--dump-dir", metavar="DIR", help="write NNN_<pass>.qir after every pass")
    opt.add_argument("--timing", action="store_true", help="print a per-pass time and statistics table")
    opt.add_argument("--no-verify", dest="verify", action="store_false",
                     help="skip the IR verifier after each pass")
    opt.add_argument("--crash-dir", metavar="DIR", default=".",
                     help="where a failing pass leaves its reproducer (default: the current folder)")
    opt.add_argument("--no-reproducer", dest="reproducer", action="store_false",
                     help="keep no IR snapshot before each pass (faster on large graphs; no reproducer on a crash)")
    _add_plugin_option(opt)
    _add_import_options(opt)
    opt.set_defaults(run=_opt)

    debug = commands.add_parser(
        "debug", help="find where a quantized model's error comes from, value by value",
        description="Run the float and the quantized model on DATA, compare every value they share, and "
        "print the values worst first by the noise each adds beyond what its inputs carried in.",
    )
    debug.add_argument("float_model", metavar="FLOAT", help="the float model: .onnx (or .qir)")
    debug.add_argument("quant_model", metavar="QUANT", help="the quantized model: .onnx (or .qir)")
    debug.add_argument("--data", metavar="DATA", required=True,
                       help="evaluation data: .npz (samples on axis 0), .npy, or a folder of .npz/.npy files")
    debug.add_argument("--top", type=int, default=20, metavar="N", help="rows to print (default 20; 0: all)")
    debug.add_argument("--dump", metavar="OUT.qir",
                       help="write the quantized IR with err<...> on each value (constants in OUT.npz)")
    debug.add_argument("--json", metavar="OUT.json", help="write every value's figures as JSON")
    debug.set_defaults(run=_debug)

    bench = commands.add_parser(
        "bench", help="time a float and a quantized model side by side in ONNX Runtime",
        description="Run FLOAT and QUANT interleaved in ONNX Runtime (CPU) at batch 1 and batch N, with each "
        "thread count, and print their sizes, median and p90 latency, rows per second and a verdict per "
        "setting. The feed is the first of DATA, its rows repeated to fill a batch; without --data, random "
        "inputs built from FLOAT's input shapes (standard normal floats, zero integers; a dim that is not a "
        "number is 1 unless --shape gives the input's shape).",
    )
    bench.add_argument("float_model", metavar="FLOAT", help="the float model (.onnx)")
    bench.add_argument("quant_model", metavar="QUANT", help="the quantized model (.onnx)")
    bench.add_argument("--data", metavar="DATA", help="inputs: .npz (samples on axis 0), .npy, or a folder of "
                       ".npz/.npy files; only the first feed is used")
    bench.add_argument("--batch", type=_positive, default=8, metavar="N", help="the batch measured besides 1 "
                       "(default 8)")
    bench.add_argument("--threads", type=_non_negative, nargs="+", default=[1, 0], metavar="T",
                       help="intra-op thread counts to measure, 0 for ONNX Runtime's default, all cores "
                       "(default: 1 0)")
    bench.add_argument("--shape", type=_input_shape, action="append", default=[], metavar="INPUT=D0,D1,...",
                       help="the shape of INPUT's random feed, without --data (repeatable)")
    bench.add_argument("--budget", type=float, default=1.0, metavar="SECONDS",
                       help="time per setting, after which its runs stop (default 1)")
    bench.add_argument("--json", metavar="OUT.json", help="write the figures as JSON")
    bench.set_defaults(run=_bench)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected INPUT=D0,D1,... with positive dims, not {text!r}")
    return name, shape


def _add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", metavar="FILE.py", action="append", default=[],
                        help="load passes from this Python file (repeatable)")


def _load_plugins(args: argparse.Namespace) -> None:
    passes.load_entry_point_plugins()
    for path in args.plugin:
        passes.load_plugin_file(path)


def _add_executor_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--executor", metavar="local|ray|ray://ADDRESS", default="local",
                        help=f"where {what} run: local processes (default), Ray tasks on the cluster RAY_ADDRESS "
                        "names or a new local one (ray), or on the cluster at ADDRESS (needs qcompiler[ray])")


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=TARGET_NAMES,
                        help="the runtime to quantize for (default: the recipe's, else ort-cpu)")
    parser.add_argument("--cpu-flags", metavar="FLAG,...", type=lambda text: frozenset(filter(None, text.split(","))),
                        help="the CPU feature flags of the machine the model will run on, as /proc/cpuinfo "
                        "spells them (default: this machine's), e.g. avx2 for a CPU without VNNI")


def _target(args: argparse.Namespace, recipe: Recipe) -> passes.Target:
    return passes.Target.named(args.target or recipe.target or "ort-cpu", flags=args.cpu_flags)


def _add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cleanup", action="store_true",
                        help="fold constants and drop dead nodes on ONNX import (onnx-graphsurgeon)")
    parser.add_argument("--no-shape-inference", dest="infer_shapes", action="store_false",
                        help="skip shape inference on ONNX import")


def _read(args: argparse.Namespace, weights: str | None = None) -> ir.Model:
    model = read_model(args.model, weights=weights, cleanup=args.cleanup, infer_shapes=args.infer_shapes)
    ir.verify_model(model)
    return model


def _dump(args: argparse.Namespace) -> int:
    weights = args.weights or (str(Path(args.output).with_suffix(".npz")) if args.output else "summary")
    text = write_dump(_read(args), args.output, weights)
    if args.output is None:
        sys.stdout.write(text)
    return 0


def _export(args: argparse.Namespace) -> int:
    model = _read(args, weights=args.weights)
    ir.save_model(model, args.output, external_data=args.external_data or None)
    return 0


def _compile(args: argparse.Namespace) -> int:
    _load_plugins(args)
    for path in (args.output, args.report, args.save_overrides):
        if path is not None:
            check_writable(path)
    if args.auto:
        return _compile_auto(args)
    if args.mlflow is not None:
        print("qc: error: --mlflow logs the rungs of --auto: add --auto or drop --mlflow", file=sys.stderr)
        return 2
    if args.mode and args.pipeline:
        print(f"qc: error: give --mode or --pipeline, not both (--mode {args.mode} is the pipeline "
              f"{MODES[args.mode]!r})", file=sys.stderr)
        return 2
    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    pipeline = args.pipeline
    if args.min_sqnr is not None:
        recipe.pass_options.setdefault("assign-precision", {})["min_sqnr_db"] = [repr(args.min_sqnr)]
        pipeline = pipeline or "mixed"
    result = compile_model(args.model, args.calib, recipe=recipe, pipeline=pipeline, target=_target(args, recipe),
                           eval=args.eval, dump_dir=args.dump_dir, on_quantized=args.on_quantized, mode=args.mode,
                           reference=args.reference, log=_log, crash_dir=args.crash_dir, executor=args.executor)
    result.save(args.output)
    if args.report:
        write_text(args.report, result.report.to_json())
    if args.save_overrides:
        write_text(args.save_overrides, overrides_toml(result.model, _overrides_comment(args.model, result.report)))
    if args.timing:
        sys.stderr.write(passes.Timing(rows=[(p.name, p.seconds, p.changed, p.stats)
                                             for p in result.report.passes]).table())
    print("\n".join(result.report.summary()))
    print(f"wrote {args.output}")
    return 0


def _compile_auto(args: argparse.Namespace) -> int:
    """--auto: the ladder of qcompiler.auto; exit 1 only with --require and nothing good enough."""
    clashing = [flag for flag, given in (("--mode", args.mode), ("--pipeline", args.pipeline),
                                         ("--min-sqnr", args.min_sqnr is not None)) if given]
    if clashing:
        print(f"qc: error: --auto chooses the pipeline itself; drop {', '.join(clashing)}", file=sys.stderr)
        return 2
    try:
        budget = parse_duration(args.time_budget)
    except ValueError as err:
        print(f"qc: error: --time-budget: {err}", file=sys.stderr)
        return 2
    recipe = Recipe.load(args.recipe) if args.recipe else None
    tracker = AutoTracker(args.mlflow or None) if args.mlflow is not None else None
    try:
        result = auto(args.model, args.calib, tolerance=args.tolerance, eval=args.eval, metric=args.metric,
                      recipe=recipe, require=args.require, log=_log, time_budget_s=budget, executor=args.executor,
                      search=args.search)
    except AutoError as err:
        print(f"qc: error: {err}", file=sys.stderr)
        return 1
    save_auto(result, args.output)
    if args.report:
        write_text(args.report, json.dumps(result.to_dict(), indent=2) + "\n")
    print("\n".join(result.summary()))
    if result.chosen is not None:
        print("\n".join(result.chosen.result.report.summary()))
    if tracker is not None:
        parent = tracker.log(result, args.model)
        print(f"logged {len(result.attempts)} rungs to MLflow at {tracker.uri}, under run {parent}")
    print(f"wrote {args.output}" + ("" if result.chosen is not None else " (the float model, unchanged)"))
    return 0


def _log(message: str) -> None:
    print(f"qc: {message}", file=sys.stderr)


def _overrides_comment(model: str, report) -> str:
    lines = [f"precision per layer chosen for {model}; pass this file with --recipe to pin it"]
    if report.precision is not None:
        lines.append(f"budget {report.precision['budget']}: {report.precision['all_int8']} all int8 -> "
                     f"{report.precision['final']}")
    else:
        lines.append("no assign-precision in the pipeline: only levels a recipe pinned")
    return "\n".join(lines)


def _sensitivity(args: argparse.Namespace) -> int:
    _load_plugins(args)
    for path in (args.json, args.plot):
        if path is not None:
            check_writable(path)
    if args.plot:
        _require_matplotlib()
    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    table = sensitivity_table(args.model, args.calib, eval=args.eval, recipe=recipe, pipeline=args.pipeline,
                              target=_target(args, recipe), samples=args.samples, jobs=args.jobs, cache=args.cache,
                              executor=args.executor)
    lines = table.lines()
    print("\n".join(lines[:2 + args.top] if args.top else lines))
    for note in table.notes:
        print(f"note: {note}")
    if args.json:
        write_text(args.json, json.dumps(table.to_dict(), indent=1) + "\n")
    if args.plot:
        with atomic_output(args.plot) as staged:
            plot_table(table, staged, title=Path(args.model).name)
        print(f"wrote {args.plot}")
    return 0


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ir.IRError("--plot needs matplotlib: pip install 'qcompiler[plot]'") from None


def _passes(args: argparse.Namespace) -> int:
    _load_plugins(args)
    for name, cls in passes.registered_passes().items():
        print(f"{name}: {cls.summary()}")
        for option in dataclasses.fields(cls.Options):
            print(f"    {option.name.replace('_', '-')}: {_type_name(option)} = {_default_text(option)}")
        contract = [f"{part} {','.join(sorted(keys))}" for part, keys in
                    (("needs", cls.needs), ("gives", cls.gives), ("breaks", cls.breaks), ("refuses", cls.refuses),
                     ("reads meta", cls.reads), ("writes meta", cls.writes)) if keys]
        if contract:
            print(f"    [{'; '.join(contract)}]")
    pipelines = passes.registered_pipelines()
    if pipelines:
        print("\nnamed pipelines:")
        for name, text in pipelines.items():
            print(f"  {name}: {text}")
    return 0


def _type_name(option: dataclasses.Field) -> str:
    text = option.type if isinstance(option.type, str) else getattr(option.type, "__name__", str(option.type))
    return text.replace("typing.", "")


def _default_text(option: dataclasses.Field) -> str:
    value = option.default if option.default is not dataclasses.MISSING else option.default_factory()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "(empty)"
    return "none" if value is None else str(value)


def _opt(args: argparse.Namespace) -> int:
    """The passes of compile without its validation: with the same recipe and target, the same model."""
    _load_plugins(args)
    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    manager = passes.PassManager(recipe.steps(args.pipeline))  # a bad pipeline fails before any work
    model = _read(args)
    float_names = unique_names(model.graph)
    instruments: list[passes.Instrument] = []
    if args.reproducer:
        instruments.append(passes.CrashReproducer(Path(args.crash_dir)))
    if args.verify:
        instruments.append(passes.Verifier())
    if args.print_ir_before or args.print_ir_after:
        instruments.append(passes.PrintIR(frozenset(args.print_ir_before), frozenset(args.print_ir_after),
                                          only_changed=args.print_ir_after_change))
    if args.dump_dir:
        instruments.append(passes.DumpDir(Path(args.dump_dir)))
    if args.timing:
        instruments.append(passes.Timing())
    calibration_data = open_calibration_data(args.calib, input_specs(model)) if args.calib else None
    context = passes.PassContext(target=_target(args, recipe), overrides=recipe.overrides,
                                 calibration_data=calibration_data, instruments=instruments)
    result = manager.run(model, context)
    for warning in result.warnings:
        print(f"qc: warning: {warning}", file=sys.stderr)
    record_float_names(model, float_names)
    _write_output(model, args)
    return 0


def _write_output(model: ir.Model, args: argparse.Namespace) -> None:
    if args.output is None:
        sys.stdout.write(write_dump(model, None, args.weights or "summary"))
    elif Path(args.output).suffix == ".onnx":
        ir.save_model(model, args.output)
    else:
        write_dump(model, args.output, args.weights or str(Path(args.output).with_suffix(".npz")))


def _debug(args: argparse.Namespace) -> int:
    for path in (args.dump, args.json):
        if path is not None:
            check_writable(path)
    float_model, quant_model = read_model(args.float_model), read_model(args.quant_model)
    data = open_calibration_data(args.data, input_specs(float_model))
    result = value_errors(float_model, quant_model, data)
    print(result.describe())
    sys.stdout.write(result.table(args.top or None))
    if args.json:
        write_text(args.json, result.to_json())
    if args.dump:
        annotate(quant_model, result)
        write_dump(quant_model, args.dump, str(Path(args.dump).with_suffix(".npz")))
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json)
    for path in (args.float_model, args.quant_model):
        if Path(path).suffix != ".onnx":
            raise ir.IRError(f"{path}: qc bench times ONNX files (.onnx); write a .qir as ONNX with qc export")
    float_model, quant_model = read_model(args.float_model), read_model(args.quant_model)
    specs = input_specs(float_model)
    try:
        if args.data:
            feeds = next(iter(open_calibration_data(args.data, specs)), None)
            if feeds is None:
                raise ir.IRError(f"{args.data}: no samples")
        else:
            feeds = random_feeds(specs, dict(args.shape))
        sizes = {"float": file_bytes(args.float_model), "quantized": file_bytes(args.quant_model)}
        result = benchmark(args.float_model, args.quant_model, feeds, specs, size_bytes=sizes,
                           quantized=quantized_kind(quant_model), batches=(1, args.batch), threads=args.threads,
                           budget_s=args.budget, repeat=10_000)
    except ValueError as err:
        raise ir.IRError(str(err)) from None
    print(result.size_line())
    print("\n".join(result.lines()))
    for warning in result.warnings():
        print(f"warning: {warning}")
    if args.json:
        write_text(args.json, json.dumps(result.to_dict(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
