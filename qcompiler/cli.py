"""The `qc` command line.

Errors in the user's input print one line, `qc: error: ...`, and exit 1; usage
errors exit 2 (argparse's convention). No traceback reaches the terminal for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qcompiler import __version__, ir
from qcompiler.modelio import read_model, write_dump


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ir.IRError, OSError) as err:
        print(f"qc: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qc: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qc", description="qcompiler: a quantization compiler for ONNX models."
    )
    parser.add_argument("--version", action="version", version=f"qc {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    dump = commands.add_parser(
        "dump", help="print the IR of a model as text",
        description="Print a model (.onnx or .qir) as text IR. With --weights FILE.npz the large "
        "constants go to that file and the dump parses back to the same model.",
    )
    dump.add_argument("model", help="an .onnx or .qir file")
    dump.add_argument("-o", "--output", help="write the text here instead of standard output")
    dump.add_argument(
        "--weights", default="summary", metavar="inline|summary|FILE.npz",
        help="inline: every constant in full; summary (default): large constants as a summary; "
        "FILE.npz: summaries in the text, data saved to FILE.npz",
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
    return parser


def _add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cleanup", action="store_true",
                        help="fold constants and drop dead nodes on ONNX import (onnx-graphsurgeon)")
    parser.add_argument("--no-shape-inference", dest="infer_shapes", action="store_false",
                        help="skip shape inference on ONNX import")


def _read(args: argparse.Namespace, weights: str | None = None) -> ir.Model:
    model = read_model(args.model, weights=weights, cleanup=args.cleanup, infer_shapes=args.infer_shapes)
    model.verify()
    return model


def _dump(args: argparse.Namespace) -> int:
    text = write_dump(_read(args), args.output, args.weights)
    if args.output is None:
        sys.stdout.write(text)
    return 0


def _export(args: argparse.Namespace) -> int:
    model = _read(args, weights=args.weights)
    ir.save_model(model, args.output, external_data=args.external_data or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
