"""The PyTorch front end: a `torch.nn.Module` becomes an IR model whose nodes know their module.

1. `export(module, example_inputs)` runs `torch.onnx.export` and lowers the result like
   any ONNX file. The default exporter is torch's dynamo one (`torch.export` tracing,
   `dynamo=True`), the default of torch 2.13: it records each ONNX node's module stack
   (`pkg.torch.onnx.name_scopes`), so provenance is exact; it takes `dynamic_shapes` as
   `torch.export` does; and it emits one node per high-level op (LayerNormalization,
   Gelu, opset 18+) where the TorchScript exporter spells GELU out with Erf. It is
   slower (1-4 s on a small model) and fails on Python control flow that depends on
   data; `exporter="classic"` (TorchScript, `dynamo=False`, opset 17) covers those
   models, with `dynamic_shapes` as `{input: {axis: name}}` and module paths recovered
   from its scope names (`/layer.0/attention/query/MatMul`).
2. Every node gets `meta["module"]`, the dotted path of the module that produced it
   (`encoder.layer.3.attention.query`; "" for the root module), and a name built from it
   (`encoder.layer.3.attention.query/MatMul`), so dumps, reports and recipe overrides
   (`[overrides.module."encoder.layer.3"]`) speak in the user's names. Nodes the exporter
   made up without a module (shape arithmetic, folded constants) keep their own name.
3. The module is exported in eval mode (dropout off, batch norm on running statistics),
   and its training flag is restored afterwards. Weights over 1 GiB go through a
   temporary file with external data: a ModelProto cannot serialize past 2 GB.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch

from qcompiler import ir
from qcompiler.passes.infra.progress import silenced

EXPORTERS = ("dynamo", "classic")
CLASSIC_OPSET = 17
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_EXTERNAL_DATA_BYTES = 1 << 30


class ExportError(Exception):
    """torch could not export the module; says which exporter and why."""


def export(module: torch.nn.Module, example_inputs: Any, *, dynamic_shapes: Any = None,
           exporter: str = "dynamo") -> ir.Model:
    """`module` as an IR model, each node annotated with its module path (rules 1-3)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"export() takes a torch.nn.Module, not {type(module).__name__}")
    args, kwargs = _split_inputs(example_inputs)
    with _eval_mode(module), silenced("torch.onnx"), tempfile.TemporaryDirectory(prefix="qc-export-") as scratch:
        try:
            source = _run_exporter(module, args, kwargs, dynamic_shapes, exporter, Path(scratch))
        except Exception as err:  # torch raises many types; the message is what helps
            raise ExportError(f"torch.onnx.export ({exporter}) failed on {type(module).__name__}: "
                              f"{_first_line(err)}") from err
        paths = _module_paths(source, module, exporter)
        model = ir.load_model(source)
    _annotate(model, paths)
    return model


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """A tensor, a tuple of forward's positional arguments, or a dict of its keyword arguments."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    raise TypeError("example_inputs must be a tensor, a tuple of forward's arguments or a dict of its "
                    f"keyword arguments, not {type(example_inputs).__name__}")


def _run_exporter(module, args, kwargs, dynamic_shapes, exporter: str, scratch: Path):
    """The exported model: a ModelProto, or a path when its weights need external data."""
    large = sum(p.numel() * p.element_size() for p in module.state_dict().values()) > _EXTERNAL_DATA_BYTES
    path = scratch / "model.onnx"
    if exporter == "dynamo":
        program = torch.onnx.export(module, args, kwargs=kwargs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    verbose=False)
        if not large:
            return program.model_proto
        program.save(str(path), external_data=True)
        return path
    names = _input_names(module, args, kwargs)
    torch.onnx.export(module, args + ((kwargs,) if kwargs else ()), str(path), dynamo=False,
                      opset_version=CLASSIC_OPSET, input_names=names, dynamic_axes=dynamic_shapes,
                      external_data=large)
    return path


def _input_names(module, args, kwargs) -> list[str]:
    """forward's parameter names, as the dynamo exporter names the graph inputs."""
    parameters = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return parameters[:len(args)] + list(kwargs)


def _module_paths(source, module: torch.nn.Module, exporter: str) -> dict[str, str]:
    """Each exported node's name -> the path of the module it came from."""
    proto = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source), load_external_data=False)
    if exporter == "dynamo":
        return {n.name: path for n in proto.graph.node if (path := _from_scopes(n)) is not None}
    known = {name for name, _ in module.named_modules()}
    return {n.name: path for n in proto.graph.node if (path := _from_scope_name(n.name, known)) is not None}


def _from_scopes(node) -> str | None:
    """`['', 'layer.0', 'layer.0.ffn', 'linear_4']` -> 'layer.0.ffn': the last entry is the op itself."""
    text = next((p.value for p in node.metadata_props if p.key == _SCOPES_KEY), None)
    if text is None:
        return None
    scopes = ast.literal_eval(text)
    return scopes[-2] if len(scopes) >= 2 and scopes[0] == "" else None


def _from_scope_name(name: str, known: set[str]) -> str | None:
    """'/features/features.0/norm1/Add' -> 'features.0.norm1'.

    The TorchScript exporter names a scope after the attribute that holds the module,
    qualified from its nearest called ancestor: a Sequential's child shows as
    `features.0` under `features`. So each part extends the path when that makes a
    known module, and otherwise is a path of its own.
    """
    if not name.startswith("/"):
        return None
    path = ""
    for part in name.split("/")[1:-1]:
        joined = f"{path}.{part}" if path else part
        if joined in known:
            path = joined
        elif part in known:
            path = part
        else:
            return None
    return path


def _annotate(model: ir.Model, paths: dict[str, str]) -> None:
    """Set meta["module"] and rename each annotated node `<module>/<OpType>` (rule 2)."""
    taken = {node.name for node in model.graph.nodes if node.name not in paths}
    counts: dict[str, int] = {}
    for node in model.graph.nodes:
        path = paths.get(node.name)
        if path is None:
            continue
        node.meta["module"] = path
        stem = f"{path or 'root'}/{node.op_type}"
        name = stem
        while name in taken:
            counts[stem] = counts.get(stem, 0) + 1
            name = f"{stem}_{counts[stem]}"
        taken.add(name)
        node.name = name


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

