"""The same samples given in every form people keep them compile to the same model; pickles never run."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from exporter_models import text_lines, text_recognizer
from helpers import npy_with_unsortable_header

import qcompiler
from qcompiler import ir
from qcompiler.data import CalibrationDataError, input_specs, open_calibration_data

DIGITS = Path(__file__).resolve().parent.parent / "golden" / "digits_cnn"


def ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of the arrays, as np.savez stores a list of variable-shape samples."""
    holder = np.empty(len(arrays), dtype=object)
    holder[:] = arrays
    return holder


def compiled_text(model, calib) -> str:
    return ir.print_model(qcompiler.compile(model, calib).model)


@pytest.fixture(scope="module")
def digits_rows():
    with np.load(DIGITS / "calib.npz") as calib:
        return calib["x"][:32]


def test_rows_stacked_feeds_ragged_npz_and_a_folder_compile_to_the_same_model(tmp_path, digits_rows):
    model = (DIGITS / "model.onnx").read_bytes()
    np.savez(tmp_path / "rows.npz", x=digits_rows)
    np.savez(tmp_path / "stacked.npz", x=digits_rows[:, None])  # np.stack of 32 feeds of one row
    np.savez(tmp_path / "ragged.npz", x=ragged(list(digits_rows)))  # samples without their batch axis
    (tmp_path / "folder").mkdir()
    for index, row in enumerate(digits_rows):
        np.save(tmp_path / "folder" / f"{index:02d}.npy", row[None])

    readings = {form: open_calibration_data(tmp_path / form, input_specs(ir.load_model(model))).describe()
                for form in ("rows.npz", "stacked.npz", "ragged.npz", "folder")}
    assert "32 rows of axis 0" in readings["rows.npz"]
    assert "32 stacked feeds" in readings["stacked.npz"] and "32 ragged samples" in readings["ragged.npz"]
    assert "32 files, one sample each" in readings["folder"]

    texts = {form: compiled_text(model, tmp_path / form) for form in readings}
    assert len(set(texts.values())) == 1, "every form of the same samples gives the same model"


def test_variable_width_samples_compile_the_same_from_a_ragged_npz_a_list_and_a_folder(tmp_path):
    lines = text_lines(12, seed=0)
    model = text_recognizer().SerializeToString()
    np.savez(tmp_path / "lines.npz", x=ragged(lines))
    (tmp_path / "lines").mkdir()
    for index, line in enumerate(lines):
        np.savez(tmp_path / "lines" / f"{index:02d}.npz", x=line)
    texts = [compiled_text(model, source) for source in
             (tmp_path / "lines.npz", tmp_path / "lines", [{"x": line} for line in lines], {"x": lines})]
    assert all(text == texts[0] for text in texts)


class _RunsCode:
    """Pickles to a call of os.system: what np.load(allow_pickle=True) would execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _npz_with_pickle(path: Path, payload: object) -> None:
    """An .npz whose x.npy declares an object array and holds `payload` pickled."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (2,)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + pickle.dumps(payload, protocol=3))


@pytest.mark.parametrize("payload, refusal", [
    ("runs-code", "refused: the pickle names posix.system"),
    ({"a": 1}, "holds a dict, not an object array"),
    (ragged([np.zeros(2), "text"]), "item 1 is a str, not a numeric array"),
])
def test_a_pickle_that_is_not_plain_arrays_is_refused_and_nothing_runs(tmp_path, payload, refusal):
    marker = tmp_path / "ran"
    _npz_with_pickle(tmp_path / "evil.npz", _RunsCode(marker) if isinstance(payload, str) else payload)
    model = ir.load_model(DIGITS / "model.onnx")
    with pytest.raises(CalibrationDataError) as caught:
        list(open_calibration_data(tmp_path / "evil.npz", input_specs(model)))
    assert str(caught.value).startswith(f"{tmp_path / 'evil.npz'}: array 'x': ")
    assert refusal in str(caught.value).replace("nt.system", "posix.system")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_header_numpy_cannot_parse_is_one_error_line(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    if suffix == ".npy":
        path.write_bytes(npy_with_unsortable_header())
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", npy_with_unsortable_header())
    with pytest.raises(CalibrationDataError) as caught:
        list(open_calibration_data(path, input_specs(ir.load_model(DIGITS / "model.onnx"))))
    assert str(caught.value).startswith(f"{path}: cannot read: the .npy header is malformed")


def test_stacked_feeds_must_be_stacked_for_every_input_to_be_read_as_feeds():
    specs = input_specs(ir.load_model(DIGITS / "model.onnx"))
    rank5 = np.zeros((4, 1, 1, 8, 8), np.float32)
    assert [f["x"].shape for f in open_calibration_data({"x": rank5}, specs)] == [(1, 1, 8, 8)] * 4
    with pytest.raises(CalibrationDataError, match="rank 6"):
        list(open_calibration_data({"x": rank5[None]}, specs))
