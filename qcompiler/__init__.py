"""qcompiler: a quantization compiler for ONNX models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qcompiler")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
