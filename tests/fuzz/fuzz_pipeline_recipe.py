"""Fuzz the pipeline and recipe parsers: any text is a pipeline or a PipelineError, a recipe or a
RecipeError (an IRError), nothing else. The first byte picks the parser."""

from __future__ import annotations

import tempfile
from pathlib import Path

import harness

with harness.instrumented(__name__):
    from qcompiler import passes
    from qcompiler.recipe import Recipe, RecipeError


def check(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", errors="replace")
    if data[0] % 2 == 0:
        try:
            passes.parse_pipeline(text)
        except passes.PipelineError:
            pass
        return
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "recipe.toml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            Recipe.load(path)
        except RecipeError:
            pass


RECIPES = [
    '[passes.insert-observers]\nmethod = "percentile"\npercentile = 99.9\n',
    'target = "ort-cpu"\npipeline = "int8"\n[overrides]\nexclude = ["head"]\n',
    '[overrides.op_type.Conv]\nobserver = "minmax"\n[overrides.node."conv1"]\nprecision = "fp16"\n',
    '[overrides.module."layer.1.attention"]\nprecision = "w8a16"\n[passes.fold-weights]\nper_channel = false\n',
]


def seeds() -> list[bytes]:
    pipelines = [text for _, text in sorted(passes.registered_pipelines().items())]
    pipelines.append("canonicalize,fuse{patterns=conv-bn,conv-act},repeat{max=3}(cleanup),place-qdq")
    return [b"\0" + p.encode() for p in pipelines] + [b"\1" + r.encode() for r in RECIPES]


if __name__ == "__main__":
    harness.main(check)
