"""Passes over the IR: the pass contract, registry, pipelines, pass manager, instruments.

`infra/` is how passes run, `analyses/` what they compute without changing the model,
`transforms/` the passes themselves; this package re-exports the public names of infra/.
Importing it registers the built-in passes and names the built-in pipelines.
"""

from .transforms import adaquant as _adaquant  # noqa: F401  (registers the pass)
from .transforms import adaround as _adaround  # noqa: F401  (registers the pass)
from .transforms import apply_overrides as _apply_overrides  # noqa: F401  (registers the pass)
from .transforms import assign_precision as _assign_precision  # noqa: F401  (registers the pass)
from .transforms import choose_ranges as _choose_ranges  # noqa: F401  (registers the pass)
from .transforms import bias_correct as _bias_correct  # noqa: F401  (registers the pass)
from .transforms import calibrate as _calibrate  # noqa: F401  (registers the pass)
from .transforms import canonicalize as _canonicalize  # noqa: F401  (registers the pass)
from .transforms import cleanup as _cleanup  # noqa: F401  (registers the pass)
from .transforms import cluster_weights as _cluster_weights  # noqa: F401  (registers the pass)
from .transforms import convert_fp16 as _convert_fp16  # noqa: F401  (registers the pass)
from .transforms import dynamic_quant as _dynamic_quant  # noqa: F401  (registers the pass)
from .transforms import equalize as _equalize  # noqa: F401  (registers the pass)
from .transforms import fold_weights as _fold_weights  # noqa: F401  (registers the pass)
from .transforms import freeze_weight_inputs as _freeze_weight_inputs  # noqa: F401  (registers the pass)
from .transforms import fuse as _fuse  # noqa: F401  (registers the pass)
from .transforms import insert_observers as _insert_observers  # noqa: F401  (registers the pass)
from .transforms import legalize_opset as _legalize_opset  # noqa: F401  (registers the pass)
from .transforms import place_qdq as _place_qdq  # noqa: F401  (registers the pass)
from .transforms import quantize_embeddings as _quantize_embeddings  # noqa: F401  (registers the pass)
from .transforms import smooth_quant as _smooth_quant  # noqa: F401  (registers the pass)
from .transforms import weight_only as _weight_only  # noqa: F401  (registers the pass)
from .infra.base import Pass, PassCrash, PassError, PipelineError, get_pass, register_pass, registered_passes
from .infra.context import PassContext
from .infra.executor import Executor, LocalProcesses, RayTasks, executor_named
from .infra.overrides import Overrides
from .infra.instruments import CrashReproducer, DumpDir, Instrument, PrintIR, Timing, Verifier
from .infra.manager import PassManager, PassResult
from .infra.pipeline import parse_pipeline, register_pipeline, registered_pipelines
from .infra.plugins import PluginError, load_entry_point_plugins, load_plugin_file
from .infra.target import Target

# A compile's reading fixes head every quantizing pipeline, so a dump or reproducer shows every step.
_HEAD = "legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse"
register_pipeline("default", "canonicalize,fuse,cleanup")
register_pipeline("int8", f"{_HEAD},insert-observers,calibrate,place-qdq,fold-weights,quantize-embeddings,cleanup")
register_pipeline("int4", f"{_HEAD},weight-only,quantize-embeddings{{bits=4}},cleanup")
register_pipeline("int8-weight-only", f"{_HEAD},weight-only{{bits=8}},quantize-embeddings,cleanup")
register_pipeline("dynamic", f"{_HEAD},dynamic-quant,quantize-embeddings,cleanup")
register_pipeline("dynamic-smooth", f"{_HEAD},smooth-quant{{insert_mul=true}},dynamic-quant{{per_channel=true}},quantize-embeddings,cleanup")
register_pipeline("fp16", f"{_HEAD},convert-fp16,cleanup")
register_pipeline("int8-smooth", f"{_HEAD},smooth-quant,insert-observers,calibrate,place-qdq,fold-weights,"
                                 "quantize-embeddings,cleanup")
register_pipeline("int8-equalized", f"{_HEAD},equalize,insert-observers,calibrate,bias-correct,place-qdq,fold-weights,"
                                    "quantize-embeddings,cleanup")
register_pipeline("int8-ranges", f"{_HEAD},insert-observers,calibrate,choose-ranges,place-qdq,fold-weights,"
                                 "quantize-embeddings,cleanup")
register_pipeline("int8-adaround", f"{_HEAD},insert-observers,calibrate,adaround,bias-correct,place-qdq,fold-weights,"
                                   "quantize-embeddings,cleanup")
# adaquant learns the bias on quantized inputs, the activations' mean error included: no bias-correct after it
register_pipeline("int8-adaquant", f"{_HEAD},insert-observers,calibrate,adaquant,place-qdq,fold-weights,"
                                   "quantize-embeddings,cleanup")
# mixed stores the embedding tables before assign-precision, which emits every variant it measures with
# the passes after it: the same tables quantized once, not once per variant (35% of a BERT-base variant).
register_pipeline("mixed", f"{_HEAD},quantize-embeddings,insert-observers,calibrate,assign-precision,place-qdq,"
                           "fold-weights,cleanup")

__all__ = [
    "CrashReproducer", "DumpDir", "Executor", "Instrument", "LocalProcesses", "Overrides", "Pass", "PassContext", "PassCrash", "PassError", "PassManager",
    "PassResult", "PipelineError", "PluginError", "PrintIR", "RayTasks", "Timing", "Verifier", "executor_named", "get_pass",
    "load_entry_point_plugins", "load_plugin_file", "parse_pipeline", "register_pass",
    "register_pipeline", "registered_passes", "registered_pipelines", "Target",
]
