"""The fuzz harnesses' own checks, without atheris: seeds and seeded mutations of them pass through
every front door with only the library's errors, and the inputs fuzzing found stay fixed."""

from __future__ import annotations

import importlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from qcompiler import ir

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
HARNESSES = sorted(p.stem for p in (Path(__file__).resolve().parent / "fuzz").glob("fuzz_*.py"))


@pytest.mark.parametrize("name", HARNESSES)
def test_seeds_and_their_mutations_raise_only_the_library_errors(name):
    harness = importlib.import_module(name)
    seeds = harness.seeds()
    assert len(seeds) >= 5
    rng = np.random.default_rng(0)
    for seed in seeds:
        harness.check(seed)
        for _ in range(8):
            mutated = bytearray(seed)
            for _ in range(rng.integers(1, 9)):
                mutated[rng.integers(len(mutated))] = rng.integers(256)
            harness.check(bytes(mutated))


def test_a_text_string_json_cannot_read_is_a_parse_error_at_its_line():
    text = 'model opset{ai.onnx=17}\ngraph @g(%x: f32[1]) {\n  %y: f32[1] = Relu(%x) name="a\tb"\n  return %y\n}\n'
    with pytest.raises(ir.ParseError, match=r"^<text>:3:\d+: bad string"):
        ir.parse_model(text)


def test_an_npz_whose_data_fails_its_checksum_is_a_calibration_data_error(tmp_path):
    from qcompiler.data import CalibrationDataError, input_specs, open_calibration_data

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 1, 8, 8), np.float32))
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        start = archive.infolist()[0].header_offset + 30 + len("x.npy") + 200
    data[start] ^= 0xFF  # inside the array bytes: the header still reads, the CRC does not match
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    specs = input_specs(ir.load_model(Path(__file__).resolve().parent.parent / "golden" / "digits_cnn" / "model.onnx"))
    with pytest.raises(CalibrationDataError, match="cannot read"):
        list(open_calibration_data(tmp_path / "bad.npz", specs, batch_size=2))


def test_an_npy_with_a_mangled_header_is_a_calibration_data_error(tmp_path):
    from qcompiler.data import CalibrationDataError, input_specs, open_calibration_data

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 1, 8, 8), np.float32))
    raw = buffer.getvalue().replace(b"'shape': (", b"'shape': ((", 1)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "0.npy").write_bytes(raw)
    specs = input_specs(ir.load_model(Path(__file__).resolve().parent.parent / "golden" / "digits_cnn" / "model.onnx"))
    with pytest.raises(CalibrationDataError, match="cannot read"):
        list(open_calibration_data(tmp_path / "folder", specs))


def test_an_npz_member_flagged_encrypted_is_a_calibration_data_error(tmp_path):
    from qcompiler.data import CalibrationDataError, input_specs, open_calibration_data

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 1, 8, 8), np.float32))
    data = bytearray(buffer.getvalue())
    data[6] |= 0x01  # the local header's general-purpose flags: bit 0, encrypted
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x01  # and the central directory's, which zipfile reads
    (tmp_path / "locked.npz").write_bytes(bytes(data))
    specs = input_specs(ir.load_model(Path(__file__).resolve().parent.parent / "golden" / "digits_cnn" / "model.onnx"))
    with pytest.raises(CalibrationDataError, match="encrypted"):
        list(open_calibration_data(tmp_path / "locked.npz", specs))


def test_an_npy_whose_dims_overflow_is_a_calibration_data_error(tmp_path):
    from qcompiler.data import CalibrationDataError, input_specs, open_calibration_data

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1, 2**70, 8, 8)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue() + b"\0" * 64)
    specs = input_specs(ir.load_model(Path(__file__).resolve().parent.parent / "golden" / "digits_cnn" / "model.onnx"))
    with pytest.raises(CalibrationDataError):
        list(open_calibration_data(tmp_path / "huge.npy", specs))


def test_a_recipe_string_with_control_characters_reads_back_as_written(tmp_path):
    from qcompiler.recipe import Recipe, RecipeError

    path = tmp_path / "recipe.toml"
    path.write_text('[passes.insert-observers]\nmethod = "min\\tmax"\n')
    with pytest.raises(RecipeError, match=r"unknown observer 'min\\tmax'"):
        Recipe.load(path)


def test_a_pipeline_string_json_cannot_read_is_a_pipeline_error():
    from qcompiler import passes

    with pytest.raises(passes.PipelineError, match="bad string"):
        passes.parse_pipeline('insert-observers{method="a\tb"}')
