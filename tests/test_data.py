"""Calibration data readers: each source kind from real files, batching, sharding, fingerprints, and bad data.

Error messages are compared whole: they are the user interface when data is wrong.
"""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from qcompiler import ir
from qcompiler.data import CalibrationDataError, ImageRecipe, InputSpec, input_specs, open_calibration_data

F32 = np.dtype(np.float32)


def specs_of(*inputs: tuple[str, ir.DType, tuple | None]) -> list[InputSpec]:
    """input_specs of a model with these graph inputs (each read by an Identity)."""
    values = [ir.Value(name, ir.TensorType(dtype, shape)) for name, dtype, shape in inputs]
    nodes = [ir.Node("Identity", [v], [ir.Value(f"{v.name}_out", v.type)]) for v in values]
    graph = ir.Graph("g", inputs=values, nodes=nodes, outputs=[n.outputs[0] for n in nodes])
    return input_specs(ir.Model(graph, {"": 21}))


IMAGE = specs_of(("x", ir.DType.FLOAT, ("N", 3, 4, 4)))
FIXED2 = specs_of(("x", ir.DType.FLOAT, (2, 3)))
TWO = specs_of(("a", ir.DType.FLOAT, ("N", 3)), ("b", ir.DType.INT64, ("N",)))
TOKENS = specs_of(("ids", ir.DType.INT64, ("N", "seq")), ("mask", ir.DType.INT64, ("N", "seq")))


def rows(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((count, 3)).astype(np.float32), "b": np.arange(count, dtype=np.int64)}


def message(source, specs, **kwargs) -> str:
    with pytest.raises(CalibrationDataError) as caught:
        list(open_calibration_data(source, specs, **kwargs))
    return str(caught.value)


# -- input specs ------------------------------------------------------------------------


def test_input_specs_skip_inputs_with_a_default_and_keep_symbolic_dims():
    x = ir.Value("x", ir.TensorType(ir.DType.FLOAT16, ("batch", 3, None)))
    k = ir.Value("k", ir.TensorType(ir.DType.INT64, (1,)))
    nodes = [ir.Node("Identity", [v], [ir.Value(f"{v.name}_out", v.type)]) for v in (x, k)]
    graph = ir.Graph("g", inputs=[x, k], nodes=nodes, outputs=[n.outputs[0] for n in nodes])
    k.const = np.array([4], np.int64)
    graph.add_constant(k)
    assert input_specs(ir.Model(graph, {"": 21})) == [InputSpec("x", np.dtype(np.float16), ("batch", 3, None))]


def test_input_specs_reject_a_sequence_input():
    seq = ir.Value("s", ir.SequenceType(ir.TensorType(ir.DType.FLOAT)))
    graph = ir.Graph("g", inputs=[seq], outputs=[seq])
    with pytest.raises(CalibrationDataError, match=r"^model: input 's': has type SequenceType\(.*\); calibration "
                                                   r"data feeds tensors only$"):
        input_specs(ir.Model(graph, {"": 21}))


# -- .npz / .npy files and folders --------------------------------------------------------


def test_npz_feeds_one_row_per_sample_and_can_be_read_again(tmp_path):
    np.savez(tmp_path / "calib.npz", **rows(5))
    data = open_calibration_data(tmp_path / "calib.npz", TWO)
    first, second = list(data), list(data)
    assert len(data) == 5 and len(first) == 5
    for index, feed in enumerate(first):
        assert feed["a"].shape == (1, 3) and feed["b"].tolist() == [index]
        np.testing.assert_array_equal(feed["a"], rows(5)["a"][index:index + 1])
        np.testing.assert_array_equal(feed["a"], second[index]["a"])


def test_npz_batch_size_keeps_a_short_tail_for_a_symbolic_batch(tmp_path):
    np.savez_compressed(tmp_path / "calib.npz", **rows(5))
    data = open_calibration_data(tmp_path / "calib.npz", TWO, batch_size=2)
    assert len(data) == 3
    assert [feed["b"].tolist() for feed in data] == [[0, 1], [2, 3], [4]]


def test_fixed_batch_model_consumes_its_batch_and_drops_the_short_tail(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(15, dtype=np.float32).reshape(5, 3))
    data = open_calibration_data(tmp_path / "x.npy", FIXED2)
    feeds = list(data)
    assert len(data) == 2 and [f["x"][:, 0].tolist() for f in feeds] == [[0, 3], [6, 9]]
    with pytest.raises(CalibrationDataError) as caught:
        open_calibration_data(tmp_path / "x.npy", FIXED2, batch_size=3)
    assert str(caught.value) == f"{tmp_path / 'x.npy'}: batch_size=3, but the model's inputs have a fixed batch of 2"
    np.save(tmp_path / "one.npy", np.zeros((1, 3), np.float32))
    with pytest.raises(CalibrationDataError) as caught:
        open_calibration_data(tmp_path / "one.npy", FIXED2)
    assert str(caught.value) == (f"{tmp_path / 'one.npy'}: 1 sample(s), fewer than one batch of 2 "
                                 "(the model's fixed batch size)")


def test_in_memory_dict_and_array_are_rows_like_npz():
    assert [f["b"].tolist() for f in open_calibration_data(rows(3), TWO)] == [[0], [1], [2]]
    feeds = list(open_calibration_data(np.ones((4, 3), np.float32), FIXED2))
    assert [f["x"].shape for f in feeds] == [(2, 3), (2, 3)]


def test_folder_reads_npz_and_npy_files_in_sorted_order_and_ignores_other_files(tmp_path):
    single = specs_of(("x", ir.DType.FLOAT, ("N", 2)))
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "b.npy", np.full((1, 2), 2, np.float32))
    np.savez(tmp_path / "a.npz", x=np.full((1, 2), 1, np.float32))
    np.save(tmp_path / "sub" / "c.npy", np.full((3, 2), 3, np.float32))  # a file may hold a batch
    (tmp_path / "labels.txt").write_text("not data")
    np.save(tmp_path / ".hidden.npy", np.zeros((1, 5)))
    data = open_calibration_data(tmp_path, single)
    assert len(data) == 3
    assert [f["x"][:, 0].tolist() for f in data] == [[1], [2], [3, 3, 3]]


def test_folder_errors_name_the_file(tmp_path):
    np.savez(tmp_path / "0.npz", **rows(1))
    np.save(tmp_path / "1.npy", np.zeros((1, 3), np.float32))
    with pytest.raises(CalibrationDataError) as caught:
        open_calibration_data(tmp_path, TWO)
    assert str(caught.value) == (f"{tmp_path}: sample 1 ({tmp_path / '1.npy'}): a .npy file feeds one input, but "
                                 "the model has 2 (a, b); key the arrays by input name (an .npz, or dicts)")
    (tmp_path / "1.npy").unlink()
    (tmp_path / "2.npz").write_bytes(b"not a zip")
    got = message(tmp_path, TWO)
    assert got.startswith(f"{tmp_path}: sample 1 ({tmp_path / '2.npz'}): cannot read: ")


def test_missing_path_and_empty_sources(tmp_path):
    assert message(tmp_path / "nope.npz", TWO) == f"{tmp_path / 'nope.npz'}: no such file or folder"
    (tmp_path / "calib.csv").write_text("1,2,3")
    assert message(tmp_path / "calib.csv", TWO) == f"{tmp_path / 'calib.csv'}: not an .npz or .npy file, or a folder"
    (tmp_path / "calib.csv").unlink()
    assert message(tmp_path, TWO) == f"{tmp_path}: no samples: no .npy or .npz files"
    np.savez(tmp_path / "empty.npz", a=np.zeros((0, 3), np.float32), b=np.zeros(0, np.int64))
    assert message(tmp_path / "empty.npz", TWO) == f"{tmp_path / 'empty.npz'}: no samples"
    assert message([], TWO) == "<list>: no samples"
    assert message((s for s in []), TWO) == "<generator>: no samples"


def test_npz_arrays_must_agree_on_the_number_of_samples(tmp_path):
    np.savez(tmp_path / "calib.npz", a=np.zeros((4, 3), np.float32), b=np.zeros(3, np.int64))
    assert message(tmp_path / "calib.npz", TWO) == (f"{tmp_path / 'calib.npz'}: arrays hold different numbers of "
                                                     "samples: a has 4, b has 3")


# -- images -----------------------------------------------------------------------------


def solid(path, size, rgb):
    Image.new("RGB", size, rgb).save(path)


def test_image_folder_resizes_crops_normalizes(tmp_path):
    solid(tmp_path / "b.png", (12, 8), (255, 0, 51))
    (tmp_path / "cats").mkdir()
    solid(tmp_path / "cats" / "a.jpg", (4, 9), (255, 0, 51))
    recipe = ImageRecipe(resize=6, crop=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    data = open_calibration_data(tmp_path, IMAGE, image_recipe=recipe)
    feeds = list(data)
    assert len(data) == 2 and all(f["x"].shape == (1, 3, 4, 4) and f["x"].dtype == F32 for f in feeds)
    png = feeds[0]["x"]  # "b.png" sorts before "cats/a.jpg"
    np.testing.assert_allclose(png[0, :, 0, 0], [1.0, -2.0, -0.6], rtol=1e-6)
    assert np.ptp(png, axis=(2, 3)).max() == 0  # a solid image stays solid


def test_image_center_crop_bgr_nhwc_and_uint8(tmp_path):
    pixels = np.zeros((2, 6, 3), np.uint8)
    pixels[:, :, 0] = np.arange(6) * 10  # red grows left to right
    pixels[:, :, 2] = 7
    Image.fromarray(pixels).save(tmp_path / "ramp.png")
    nhwc = specs_of(("x", ir.DType.UINT8, (1, 2, 4, 3)))
    recipe = ImageRecipe(resize=None, crop=(2, 4), channels="BGR", scale=1, layout="NHWC")
    (feed,) = open_calibration_data(tmp_path, nhwc, image_recipe=recipe)
    assert feed["x"].dtype == np.uint8 and feed["x"].shape == (1, 2, 4, 3)
    assert feed["x"][0, 0, :, 2].tolist() == [10, 20, 30, 40]  # columns 1..4; red is last in BGR
    assert feed["x"][0, 0, :, 0].tolist() == [7, 7, 7, 7]


def test_images_batch_to_a_fixed_batch_model(tmp_path):
    for index in range(5):
        solid(tmp_path / f"{index}.png", (4, 4), (index, 0, 0))
    fixed = specs_of(("x", ir.DType.FLOAT, (2, 3, 4, 4)))
    data = open_calibration_data(tmp_path, fixed, image_recipe=ImageRecipe(resize=None, crop=None, scale=1))
    assert len(data) == 2 and [f["x"][:, 0, 0, 0].tolist() for f in data] == [[0, 1], [2, 3]]


def test_image_errors(tmp_path, monkeypatch):
    solid(tmp_path / "a.png", (4, 4), (0, 0, 0))
    (tmp_path / "b.jpg").write_bytes(b"this is not a jpeg")
    recipe = ImageRecipe(resize=None, crop=None)
    got = message(tmp_path, IMAGE, image_recipe=recipe)
    assert got.startswith(f"{tmp_path}: sample 1 ({tmp_path / 'b.jpg'}): cannot read the image: cannot identify")
    (tmp_path / "b.jpg").unlink()
    assert message(tmp_path, IMAGE, image_recipe=ImageRecipe(resize=None, crop=8)) == (
        f"{tmp_path}: sample 0 ({tmp_path / 'a.png'}): is 4x4 after resizing, smaller than the 8x8 crop")
    assert message(tmp_path, IMAGE, image_recipe=ImageRecipe(resize=3, crop=None)) == (
        f"{tmp_path}: sample 0 ({tmp_path / 'a.png'}): input 'x': dim 2 is 3, the model expects 4 "
        "(shape (1, 3, 3, 3), model [N,3,4,4])")
    assert message(tmp_path, TWO, image_recipe=recipe) == (
        f"{tmp_path}: an image folder feeds one input, but the model has 2 (a, b)")
    uint8 = specs_of(("x", ir.DType.UINT8, ("N", 3, 4, 4)))
    assert message(tmp_path, uint8, image_recipe=recipe) == (
        f"{tmp_path}: input 'x': an ImageRecipe cannot make uint8 pixels for this input (integer inputs take raw "
        "0..255 pixels: scale=1, mean 0, std 1)")
    assert message(tmp_path, IMAGE) == (
        f"{tmp_path}: no samples: no .npy or .npz files (it holds images: pass an image_recipe)")
    with pytest.raises(ValueError, match="layout must be 'NCHW' or 'NHWC'"):
        ImageRecipe(layout="CHW")
    monkeypatch.setitem(sys.modules, "PIL.Image", None)  # as if Pillow were not installed
    assert message(tmp_path, IMAGE, image_recipe=recipe) == (
        f"{tmp_path}: reading images needs Pillow: pip install 'qcompiler[images]'")


# -- iterables and DataLoaders ----------------------------------------------------------------


def test_list_of_dicts_and_tuples_is_reiterable():
    samples = [{"a": np.ones((2, 3)), "b": np.array([1, 2])}, (np.zeros((1, 3), np.float32), np.array([3]))]
    data = open_calibration_data(samples, TWO)
    feeds = list(data)
    assert len(data) == 2 and len(list(data)) == 2
    assert feeds[0]["a"].dtype == F32 and feeds[0]["b"].tolist() == [1, 2]  # float64 cast to float32
    assert feeds[1]["b"].tolist() == [3]


def test_generator_reads_once_and_a_function_replays():
    gen = ({"a": np.ones((1, 3), np.float32), "b": np.array([i])} for i in range(3))
    data = open_calibration_data(gen, TWO)
    assert len(list(data)) == 3
    with pytest.raises(CalibrationDataError) as caught:
        list(data)
    assert str(caught.value) == (
        "<generator>: can be read only once, and this is a second pass over the data (the calibrate pass reads it "
        "several times); pass a list, or a function returning a fresh iterator (e.g. lambda: make_batches())")
    with pytest.raises(TypeError, match="the number of samples is unknown"):
        len(data)

    def make():
        return ({"a": np.ones((1, 3), np.float32), "b": np.array([i])} for i in range(3))

    replay = open_calibration_data(make, TWO)
    assert [f["b"].tolist() for f in replay] == [[0], [1], [2]] == [f["b"].tolist() for f in replay]
    assert replay.fingerprint() == open_calibration_data(make, TWO).fingerprint()


def test_torch_dataloader_positional_and_dict_batches():
    torch.manual_seed(0)
    x = torch.randn(10, 3, 4, 4)
    loader = DataLoader(TensorDataset(x), batch_size=4)
    data = open_calibration_data(loader, IMAGE)
    feeds = list(data)
    assert len(data) == 3 and [f["x"].shape[0] for f in feeds] == [4, 4, 2]
    assert isinstance(feeds[0]["x"], np.ndarray) and feeds[0]["x"].dtype == F32
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), x.numpy())

    pairs = DataLoader(TensorDataset(torch.randn(6, 3), torch.arange(6)), batch_size=3)
    assert [f["b"].tolist() for f in open_calibration_data(pairs, TWO)] == [[0, 1, 2], [3, 4, 5]]
    dicts = DataLoader([{"a": torch.zeros(3), "b": torch.tensor(i)} for i in range(4)], batch_size=2)
    assert [f["b"].tolist() for f in open_calibration_data(dicts, TWO)] == [[0, 1], [2, 3]]

    labelled = DataLoader(TensorDataset(x, torch.arange(10)), batch_size=4)
    assert message(labelled, IMAGE) == (
        "<DataLoader>: sample 0: has 2 items, but the model has 1 input(s) (x); yield dicts keyed by input name, "
        "or leave out extra items such as labels")
    fixed = specs_of(("x", ir.DType.FLOAT, (4, 3, 4, 4)))
    assert message(loader, fixed) == (
        "<DataLoader>: sample 2: input 'x': dim 0 is 2, the model expects 4 (shape (2, 3, 4, 4), model [4,3,4,4])")


def test_batch_size_joins_iterable_samples_and_checks_a_fixed_batch():
    samples = [{"x": np.full((1, 3), i, np.float32)} for i in range(5)]
    joined = open_calibration_data(samples, FIXED2, batch_size=2)
    assert len(joined) == 2 and [f["x"][:, 0].tolist() for f in joined] == [[0, 1], [2, 3]]
    samples[2] = {"x": np.zeros((2, 3), np.float32)}
    assert message(samples, FIXED2, batch_size=2) == (
        "<list>: sample 2: input 'x': samples 2-3 make a batch of 3 rows, the model expects 2")


def test_variable_length_samples_for_symbolic_dims():
    samples = [{"ids": np.arange(n, dtype=np.int64)[None], "mask": np.ones((1, n), np.int64)} for n in (5, 7, 3)]
    data = open_calibration_data(samples, TOKENS)
    assert [f["ids"].shape for f in data] == [(1, 5), (1, 7), (1, 3)]
    assert message(samples, TOKENS, batch_size=2) == (
        "<list>: sample 1: input 'ids': has shape (1, 7), which cannot be batched with sample 0's (1, 5); only "
        "dim 0 may differ, so feed variable-length samples with batch_size=1")
    mixed = [{"ids": np.zeros((1, 5), np.int64), "mask": np.ones((1, 6), np.int64)}]
    assert message(mixed, TOKENS) == (
        "<list>: sample 0: input 'mask': dim 1 ('seq') is 6, but input 'ids' has 'seq' = 5 in the same sample")


# -- sharding and fingerprints --------------------------------------------------------------


def test_shards_cover_every_sample_once_and_pickle(tmp_path):
    np.savez(tmp_path / "calib.npz", **rows(7))
    data = open_calibration_data(tmp_path / "calib.npz", TWO, batch_size=2)
    shards = [pickle.loads(pickle.dumps(data.shard(i, 3))) for i in range(3)]
    seen = [f["b"].tolist() for shard in shards for f in shard]
    assert sorted(sum(seen, [])) == list(range(7)) and sorted(seen) == [[0, 1], [2, 3], [4, 5], [6]]
    assert [len(s) for s in shards] == [2, 1, 1]
    halves = [data.shard(0, 3).shard(i, 2) for i in range(2)]  # a shard of a shard is a finer shard
    assert [[f["b"].tolist() for f in h] for h in halves] == [[[0, 1]], [[6]]]

    samples = [{"a": np.ones((1, 3), np.float32), "b": np.array([i])} for i in range(5)]
    listed = pickle.loads(pickle.dumps(open_calibration_data(samples, TWO).shard(1, 2)))
    assert [f["b"].tolist() for f in listed] == [[1], [3]]


def test_shards_do_not_read_other_shards_images(tmp_path):
    for index in range(4):
        solid(tmp_path / f"{index}.png", (4, 4), (index, 0, 0))
    (tmp_path / "1.png").write_bytes(b"broken")
    data = open_calibration_data(tmp_path, IMAGE, image_recipe=ImageRecipe(resize=None, crop=None, scale=1))
    assert [f["x"][0, 0, 0, 0] for f in data.shard(0, 2)] == [0, 2]
    assert "sample 1" in message(tmp_path, IMAGE, image_recipe=ImageRecipe(resize=None, crop=None))


def test_fingerprint_is_stable_and_follows_the_data(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, **rows(4))
    before = open_calibration_data(path, TWO).fingerprint()
    assert before == open_calibration_data(path, TWO).fingerprint() == pickle.loads(
        pickle.dumps(open_calibration_data(path, TWO))).fingerprint()
    assert open_calibration_data(path, TWO, batch_size=2).fingerprint() != before
    assert open_calibration_data(path, TWO).shard(0, 2).fingerprint() != before
    np.savez(path, **rows(4, seed=1))  # same size: the later mtime tells
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert open_calibration_data(path, TWO).fingerprint() != before

    solid(tmp_path / "a.png", (4, 4), (0, 0, 0))
    images = open_calibration_data(tmp_path, IMAGE, image_recipe=ImageRecipe(crop=4)).fingerprint()
    assert open_calibration_data(tmp_path, IMAGE, image_recipe=ImageRecipe(crop=4)).fingerprint() == images
    assert open_calibration_data(tmp_path, IMAGE, image_recipe=ImageRecipe(crop=3)).fingerprint() != images
    solid(tmp_path / "b.png", (4, 4), (0, 0, 0))
    assert open_calibration_data(tmp_path, IMAGE, image_recipe=ImageRecipe(crop=4)).fingerprint() != images

    samples = [rows(1)]
    memory = open_calibration_data(samples, TWO).fingerprint()
    assert open_calibration_data([rows(1)], TWO).fingerprint() == memory
    samples[0]["a"][0, 0] += 1
    assert open_calibration_data(samples, TWO).fingerprint() != memory
    with pytest.raises(CalibrationDataError, match="an iterator cannot be fingerprinted"):
        open_calibration_data(iter(samples), TWO).fingerprint()


# -- bad samples ------------------------------------------------------------------------------


@pytest.mark.parametrize("sample, expected", [
    ({"a": np.zeros((1, 3), np.float32)}, "input 'b': missing (the sample has: a)"),
    ({"a": np.zeros((1, 3), np.float32), "b": np.zeros(1, np.int64), "c": np.zeros(1)},
     "input 'c': is not an input of the model (its inputs: a, b)"),
    ({"a": np.zeros((3,), np.float32), "b": np.zeros(1, np.int64)},
     "input 'a': has shape (3,) (rank 1), the model expects rank 2 [N,3]"),
    ({"a": np.zeros((1, 3), np.float32), "b": np.zeros(1, np.int32)},
     "input 'b': has dtype int32, the model expects int64"),
    ({"a": np.zeros((1, 3), np.float16), "b": np.zeros(1, np.int64)},
     "input 'a': has dtype float16, the model expects float32"),
    ({"a": np.zeros((1, 4), np.float32), "b": np.zeros(1, np.int64)},
     "input 'a': dim 1 is 4, the model expects 3 (shape (1, 4), model [N,3])"),
    ({"a": np.array([[0, np.nan, np.nan]], np.float32), "b": np.zeros(1, np.int64)},
     "input 'a': contains 2 NaN/Inf value(s), the first (nan) at index (0, 1)"),
    ({"a": np.array([[0, 0, 1e300]]), "b": np.zeros(1, np.int64)},
     "input 'a': contains 1 NaN/Inf value(s) after the float64 -> float32 cast, the first (inf) at index (0, 2)"),
    (np.zeros((1, 3), np.float32),
     "is a single ndarray, but the model has 2 inputs (a, b); yield dicts keyed by input name"),
], ids=["missing", "extra", "rank", "dtype", "no-float16-cast", "static-dim", "nan", "inf-after-cast", "bare-array"])
def test_bad_sample_errors_name_source_sample_and_input(sample, expected):
    good = {"a": np.zeros((1, 3), np.float32), "b": np.zeros(1, np.int64)}
    assert message([good, good, sample], TWO) == f"<list>: sample 2: {expected}"


def test_bad_npz_row_names_the_row(tmp_path):
    arrays = rows(4)
    arrays["a"][2, 1] = np.inf
    np.savez(tmp_path / "calib.npz", **arrays, extra=np.zeros(4))
    assert message(tmp_path / "calib.npz", TWO) == (
        f"{tmp_path / 'calib.npz'}: sample 0: input 'extra': is not an input of the model (its inputs: a, b)")
    np.savez(tmp_path / "calib.npz", **arrays)
    assert message(tmp_path / "calib.npz", TWO, batch_size=2) == (
        f"{tmp_path / 'calib.npz'}: sample 2: input 'a': contains 1 NaN/Inf value(s), the first (inf) at index (0, 1)")


def test_errors_survive_pickling_from_worker_processes():
    error = CalibrationDataError("calib/", "cannot read: truncated", sample=3, file="calib/3.npz", input="x")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ir.IRError) and str(copy) == str(error) == (
        "calib/: sample 3 (calib/3.npz): input 'x': cannot read: truncated")
    assert (copy.sample, copy.file, copy.input) == (3, "calib/3.npz", "x")


def test_npz_and_npy_rows_are_read_on_demand_not_whole(tmp_path):
    """A large .npz (as np.savez writes it) or .npy costs memory only for the rows in use."""
    from qcompiler.data import _read_file

    x = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "stored.npz", x=x, index=np.arange(6))
    np.savez_compressed(tmp_path / "packed.npz", x=x)
    np.save(tmp_path / "single.npy", x)
    stored = _read_file(tmp_path / "stored.npz", None, mmap=True)
    assert not isinstance(stored["x"], np.ndarray) and len(stored["x"]) == 6
    assert np.array_equal(stored["x"][2:4], x[2:4]) and np.array_equal(stored["index"][5:6], [5])
    single = _read_file(tmp_path / "single.npy", "x", mmap=True)["x"]
    assert not isinstance(single, np.ndarray) and np.array_equal(single[0:6], x)
    packed = _read_file(tmp_path / "packed.npz", None, mmap=True)
    assert isinstance(packed["x"], np.ndarray) and np.array_equal(packed["x"], x)
