"""Fuzz the calibration data readers: any .npz, .npy or folder of them is read or refused with a
CalibrationDataError (an IRError), nothing else, and no pickle runs.

The first byte picks the form (an .npz, an .npy, a folder holding the file); the rest is the file.
The model is digits_cnn: one input x [batch, 1, 8, 8] of float32.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import harness

with harness.instrumented(__name__):
    from qcompiler import ir
    from qcompiler.data import input_specs, open_calibration_data

SPECS = input_specs(ir.load_model(harness.GOLDEN / "digits_cnn" / "model.onnx"))
FORMS = ("rows.npz", "rows.npy", "folder/sample.npz", "folder/sample.npy")


def check(data: bytes) -> None:
    if not data:
        return
    form = FORMS[data[0] % len(FORMS)]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / form
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data[1:])
        source = path.parent if form.startswith("folder") else path
        try:
            for _ in open_calibration_data(source, SPECS):
                pass
        except ir.IRError:
            pass


def seeds() -> list[bytes]:
    import io

    import numpy as np

    found = []
    for name in ("digits_cnn", "mlp", "conv_relu"):
        for kind in ("calib.npz", "inputs.npz"):
            path = harness.GOLDEN / name / kind
            if path.exists():
                raw = path.read_bytes()
                found += [bytes([0]) + raw, bytes([2]) + raw]
                with np.load(path) as arrays:
                    buffer = io.BytesIO()
                    np.save(buffer, arrays[arrays.files[0]][:4])
                    found += [bytes([1]) + buffer.getvalue(), bytes([3]) + buffer.getvalue()]
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros((1, 8, 8), np.float32), np.ones((1, 8, 8), np.float32)]
    buffer = io.BytesIO()
    np.savez(buffer, x=ragged)
    return found + [bytes([0]) + buffer.getvalue()]


if __name__ == "__main__":
    harness.main(check)
