"""Pass registry, pipeline text, pass manager and instruments."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import pytest

from qcompiler import ir, passes
from qcompiler.passes import Pass, PassContext, PassManager, PipelineError, register_pass

GRAPH = """model ir_version=10 opset{ai.onnx=21}
graph @g(%x: f32[2]) {
  %a: f32[2] = Relu(%x) name="r1"
  %b: f32[2] = Relu(%a) name="r2"
  %c: f32[2] = Relu(%b) name="r3"
  return %c
}
"""


def model() -> ir.Model:
    return ir.parse_model(GRAPH)


@register_pass
class RemoveOneRelu(Pass):
    """Bypass the last Relu, one per run (so repeat() has work to converge on)."""

    name = "test-remove-one-relu"

    def run(self, model, ctx) -> bool:
        relus = [n for n in model.graph.nodes if n.op_type == "Relu"]
        if not relus:
            return False
        node = relus[-1]
        node.outputs[0].replace_all_uses_with(node.inputs[0])
        model.graph.remove(node)
        self.stats["removed"] += 1
        return True


@register_pass
class Typed(Pass):
    """Holds options of every supported type."""

    name = "test-typed"

    @dataclass
    class Options:
        count: int = 1
        ratio: float = 0.5
        enabled: bool = False
        label: str = "x"
        patterns: tuple[str, ...] = ()
        mode: Literal["fast", "exact"] = "fast"
        limit: int | None = None

    def run(self, model, ctx) -> bool:
        ctx.report["typed"] = self.options
        return False


@register_pass
class Explode(Pass):
    """Mutates the graph, then fails: the reproducer must hold the IR from before."""

    name = "test-explode"

    def run(self, model, ctx) -> bool:
        first = next(iter(model.graph.nodes))
        first.op_type = "Sigmoid"
        raise RuntimeError("boom")


@register_pass
class BreakInvariant(Pass):
    """Reads a value that is defined nowhere."""

    name = "test-break-invariant"

    def run(self, model, ctx) -> bool:
        next(iter(model.graph.nodes)).set_input(0, ir.Value("ghost", ir.TensorType(ir.DType.FLOAT, (2,))))
        return True


def test_registry_refuses_duplicates_and_bad_names():
    with pytest.raises(ValueError, match="taken by"):
        register_pass(type("Other", (Pass,), {"name": "test-typed", "__doc__": "x"}))
    with pytest.raises(ValueError, match="kebab-case"):
        register_pass(type("Bad", (Pass,), {"name": "Bad_Name"}))
    assert passes.get_pass("cleanup").summary().startswith("Remove dead code")


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("cleanup", "cleanup"),
        (" cleanup , test-typed{ count = 3 , patterns=a,b,c , mode=exact } ", "cleanup,test-typed{count=3,patterns=a,b,c,mode=exact}"),
        ("repeat{max=4}(test-remove-one-relu,cleanup),cleanup", "repeat{max=4}(test-remove-one-relu,cleanup),cleanup"),
        ('test-typed{label="a, b"}', 'test-typed{label="a, b"}'),
        ("", ""),
    ],
)
def test_pipeline_prints_back(text, canonical):
    assert str(passes.parse_pipeline(text)) == canonical
    assert str(passes.parse_pipeline(canonical)) == canonical


def test_options_are_typed():
    ctx = PassContext()
    PassManager("test-typed{count=3,ratio=0.25,enabled=true,label=\"q,r\",patterns=a,b,mode=exact,limit=7}").run(model(), ctx)
    options = ctx.report["typed"]
    assert (options.count, options.ratio, options.enabled, options.label) == (3, 0.25, True, "q,r")
    assert (options.patterns, options.mode, options.limit) == (("a", "b"), "exact", 7)
    PassManager("test-typed{limit=none}").run(model(), ctx)
    assert ctx.report["typed"].limit is None and ctx.report["typed"].count == 1


@pytest.mark.parametrize(
    "text, column, message",
    [
        ("cleanup,clenaup", 9, "unknown pass 'clenaup'; did you mean 'cleanup'?"),
        ("test-typed{count=x}", 12, "option 'count' of pass 'test-typed': expected an integer, not 'x'"),
        ("test-typed{colour=red}", 12, "pass 'test-typed' has no option 'colour' (options: count, ratio"),
        ("test-typed{mode=slow}", 12, "'slow' is not one of fast, exact"),
        ("test-typed{enabled=yes}", 12, "expected true or false, not 'yes'"),
        ("test-typed{count=1,2}", 12, "takes one value, not a list of 2"),
        ("test-typed{count=1", 19, "unexpected end of pipeline (unbalanced braces or parentheses?)"),
        ("repeat(cleanup", 15, "unexpected end of pipeline"),
        ("cleanup}", 8, "unexpected '}'"),
        ("test-typed{3}", 12, "value '3' has no option name (expected key=value)"),
    ],
)
def test_pipeline_errors_point_at_the_column(text, column, message):
    with pytest.raises(PipelineError) as err:
        passes.parse_pipeline(text)
    assert err.value.column == column and message in str(err.value)
    assert str(err.value).splitlines()[-1] == "  " + " " * (column - 1) + "^"


def test_repeat_runs_to_a_fixpoint_and_warns_at_the_cap():
    m = model()
    result = PassManager("repeat(test-remove-one-relu)").run(m)
    assert result.changed and len(m.graph.nodes) == 0
    assert result.ran == ["test-remove-one-relu"] * 4 and not result.warnings
    capped = PassManager("repeat{max=2}(test-remove-one-relu)").run(model())
    assert capped.warnings == ["repeat{max=2}(test-remove-one-relu) still changed the model after 2 iterations"]


def test_named_pipeline_expands_and_prints_as_its_name():
    passes.register_pipeline("test-strip", "repeat(test-remove-one-relu),cleanup")
    pipeline = passes.parse_pipeline("test-strip")
    assert str(pipeline) == "test-strip"
    m = model()
    assert PassManager(pipeline).run(m).ran[-1] == "cleanup" and len(m.graph.nodes) == 0
    with pytest.raises(ValueError, match="already registered"):
        passes.register_pipeline("test-strip", "cleanup")


def test_error_names_the_pass_and_what_ran_before(tmp_path):
    reproducer = passes.CrashReproducer(tmp_path)
    with pytest.raises(passes.PassError) as err:
        PassManager("cleanup,test-explode,cleanup").run(model(), PassContext(instruments=[reproducer]))
    message = str(err.value)
    assert "pass 'test-explode' (2) failed: RuntimeError: boom [passes already run: cleanup]" in message
    assert f"reproducer written to {tmp_path / 'qc-crash-test-explode.qir'}" in message
    text = reproducer.written.read_text()
    assert '// replay: qc opt qc-crash-test-explode.qir --pipeline "test-explode,cleanup"' in text
    replayed = ir.parse_file(reproducer.written)
    assert [n.op_type for n in replayed.graph.nodes] == ["Relu"] * 3, "the IR from before the pass"


def test_verifier_names_the_pass_that_broke_the_ir():
    with pytest.raises(passes.PassError, match="(?s)invalid after pass 'test-break-invariant'.*%ghost"):
        PassManager("cleanup,test-break-invariant").run(model(), PassContext(instruments=[passes.Verifier()]))


def test_print_ir_after_change_only():
    stream = io.StringIO()
    printer = passes.PrintIR(after=frozenset({"all"}), only_changed=True, stream=stream)
    PassManager("test-typed,test-remove-one-relu").run(model(), PassContext(instruments=[printer]))
    output = stream.getvalue()
    assert output.count("// ----- IR after") == 1
    assert "// ----- IR after test-remove-one-relu (2) changed=true -----" in output
    assert "// pipeline: test-typed,test-remove-one-relu" in output


def test_dump_dir_files_parse_back(tmp_path):
    PassManager("test-remove-one-relu,cleanup").run(model(), PassContext(instruments=[passes.DumpDir(tmp_path)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001_test-remove-one-relu.qir", "002_cleanup.qir"]
    first = ir.parse_file(tmp_path / "001_test-remove-one-relu.qir")
    assert [n.name for n in first.graph.nodes] == ["r1", "r2"]


def test_timing_table_lists_passes_and_statistics():
    stream = io.StringIO()
    PassManager("repeat(test-remove-one-relu)").run(model(), PassContext(instruments=[passes.Timing(stream=stream)]))
    lines = stream.getvalue().splitlines()
    assert lines[0].split() == ["pass", "seconds", "share", "changed", "statistics"]
    assert sum("removed=1" in line for line in lines) == 3
    assert lines[-1].startswith("total")
