"""qcompiler: a quantization compiler for ONNX models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qcompiler")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

_DRIVER = ("compile", "CompileResult")


def __getattr__(name: str):
    """`qcompiler.compile` loads the driver on first use, so `import qcompiler.ir` stays light."""
    if name in _DRIVER:
        from qcompiler import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")
