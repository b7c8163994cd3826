"""Calibration data readers: every source becomes a validated, re-iterable stream of feeds.

A *feed* is one dict {input name: array with the batch axis} that the calibrate pass
runs through the model. Sources and what one *sample* of each is:

* an ``.npz`` path (or a dict of arrays): one array per input, one sample per row of
  axis 0; an ``.npy`` path (or a bare array) is the same for a single-input model;
* a folder of ``.npz``/``.npy`` files, sorted by relative path: one file per sample, its
  arrays fed as saved (with their batch axis); ``.npy`` only for a single-input model;
* a folder of images with an `ImageRecipe`: one image per sample (Pillow decodes it);
* an iterable (list, generator, torch DataLoader) or a function returning a fresh
  one: one item per sample, a dict, a tuple/list matched to the inputs in order, or one
  array (tensors are converted to numpy).

Batching: a feed is `batch_size` consecutive samples joined on axis 0. By default
(None) each sample is a feed, except that row and image samples feeding a model whose
inputs all have the same fixed batch dim N are grouped N at a time: a model exported
for batch N can run nothing else. When the batch dim is fixed, a trailing group of
fewer samples is dropped (ONNX Runtime would reject it); with a symbolic batch dim it is
fed as a shorter batch.

Dtypes must match the model exactly, with one exception: float64 arrays for a float32
input are cast. float64 is what numpy and Python floats default to, and calibration
cannot see the precision lost; values beyond float32's range become Inf and are then
reported. Any other mismatch (int32 ids for an int64 input, uint8 pixels for a float
input) is an error, since a silent cast there usually hides a preprocessing mistake.

Files and folders are listed when opened; a `.npz` is read whole on each pass over the
data, an `.npy` is memory-mapped, folder files and images are read one at a time.
"""

from __future__ import annotations

import hashlib
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler import ir, safe_pickle

# What numpy and zipfile raise for a corrupt or truncated file: zlib.error for a bad deflate stream,
# RuntimeError for a member flagged encrypted, NotImplementedError for an unknown compression,
# SyntaxError and TokenError for a mangled .npy header, MemoryError and OverflowError for dims no
# file could hold.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError,
               SyntaxError, tokenize.TokenError, MemoryError, OverflowError)
_IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"})
_ARRAY_SUFFIXES = frozenset({".npy", ".npz"})


@dataclass(frozen=True)
class InputSpec:
    """A graph input a caller must feed; `shape` holds ints, symbolic names or None (None: unknown rank)."""

    name: str
    dtype: np.dtype
    shape: tuple | None


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The graph inputs calibration data must provide (inputs with a constant default are left out)."""
    specs = []
    for value in model.graph.inputs:
        if value.const is not None:
            continue
        if not isinstance(value.type, ir.TensorType):
            raise CalibrationDataError("model", f"has type {value.type}; calibration data feeds tensors only",
                                       input=value.name)
        specs.append(InputSpec(value.name, value.type.dtype.numpy, value.type.shape))
    return specs


class CalibrationDataError(ir.IRError):
    """Calibration data that does not fit the model: names the source, the sample, the file and the input."""

    def __init__(self, source: str, problem: str, *, sample: int | None = None, file: str | None = None,
                 input: str | None = None) -> None:
        self.source, self.problem, self.sample, self.file, self.input = source, problem, sample, file, input
        where = [source]
        if sample is not None:
            where.append(f"sample {sample}" + (f" ({file})" if file else ""))
        if input is not None:
            where.append(f"input {input!r}")
        super().__init__(": ".join([*where, problem]))

    def __reduce__(self):  # the keyword fields survive the trip back from a worker process
        rebuild = partial(CalibrationDataError, sample=self.sample, file=self.file, input=self.input)
        return rebuild, (self.source, self.problem)


@dataclass(frozen=True)
class ImageRecipe:
    """How an image becomes an input array.

    The shorter side is resized to `resize` (bilinear; None keeps the size), then a
    `crop` (size, or (height, width)) is cut from the center. Pixels (0..255, in
    `channels` order) are multiplied by `scale`, then `mean` is subtracted and the result
    divided by `std`, both given per channel in `channels` order. `dtype` None takes the
    input's dtype; an integer dtype gets the raw pixels, so it allows no normalization.
    """

    resize: int | None = 256
    crop: int | tuple[int, int] | None = 224
    channels: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    dtype: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.crop, int):
            object.__setattr__(self, "crop", (self.crop, self.crop))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.channels not in ("RGB", "BGR"):
            raise ValueError(f"ImageRecipe channels must be 'RGB' or 'BGR', not {self.channels!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"ImageRecipe layout must be 'NCHW' or 'NHWC', not {self.layout!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or 0.0 in self.std:
            raise ValueError(f"ImageRecipe needs 3 means and 3 non-zero stds, got {self.mean} and {self.std}")
        sizes = [self.resize] if self.resize is not None else []
        if any(not isinstance(s, int) or s < 1 for s in [*sizes, *(self.crop or ())]):
            raise ValueError(f"ImageRecipe sizes must be positive ints: resize={self.resize}, crop={self.crop}")

    @property
    def normalizes(self) -> bool:
        return self.scale != 1 or self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0)


class CalibrationData:
    """A validated, re-iterable stream of feeds for a model.

    Each pass over it reads the source again and checks every sample as it is read.
    `len()` is the number of feeds when the source knows its size without being read
    (files, folders, lists, DataLoaders over map-style datasets); for generators,
    functions and unsized iterables it raises TypeError.
    """

    def __init__(self, source: _Source, specs: list[InputSpec], batch: int, drop_tail: bool,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self._source, self._specs, self._batch, self._drop_tail = source, specs, batch, drop_tail
        self._index, self._count = shard

    def __repr__(self) -> str:
        shard = f", shard {self._index}/{self._count}" if self._count > 1 else ""
        return f"CalibrationData({self._source.label}, batch {self._batch}{shard})"

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        batch, seen, group = self._batch, 0, []
        for index, (file, load) in enumerate(self._source.samples()):
            seen = index + 1
            if (index // batch) % self._count != self._index:
                continue  # another shard's: not even read
            group.append((index, file, self._read(index, file, load)))
            if len(group) == batch:
                yield self._join(group)
                group = []
        _check_enough(self._source.label, seen, batch, self._drop_tail)
        if group and not self._drop_tail:
            yield self._join(group)

    def __len__(self) -> int:
        samples = self._source.count()
        if samples is None:
            raise TypeError(f"{self._source.label}: the number of samples is unknown until the data is read")
        feeds = samples // self._batch if self._drop_tail else -(-samples // self._batch)
        return len(range(self._index, feeds, self._count))

    def describe(self) -> str:
        """The source, how its samples are read and how many make a feed."""
        return self._source.describe() + (f", {self._batch} per feed" if self._batch > 1 else "")

    @property
    def replayable(self) -> bool:
        """False for a one-shot iterator (a generator): only one pass over it is possible."""
        return not isinstance(self._source, _Once)

    def shard(self, index: int, count: int) -> CalibrationData:
        """Every `count`-th feed starting at `index`; the shards together hold each feed once."""
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        return CalibrationData(self._source, self._specs, self._batch, self._drop_tail,
                               (self._index + index * self._count, self._count * count))

    def fingerprint(self) -> str:
        """A hash of what would be fed: files by path, size and mtime; in-memory data by content."""
        digest = hashlib.sha256(self._source.fingerprint().encode())
        digest.update(f"|batch={self._batch}|drop={self._drop_tail}|shard={self._index}/{self._count}".encode())
        return digest.hexdigest()

    def _read(self, index: int, file: str, load: Callable[[], Any]) -> dict[str, np.ndarray]:
        try:
            return _check_sample(load(), self._specs, whole=self._batch == 1)
        except _Bad as bad:
            raise CalibrationDataError(self._source.label, bad.problem, sample=index, file=file or None,
                                       input=bad.input) from None
        except _UNREADABLE as err:  # a file that changed or was corrupt past its header
            raise CalibrationDataError(self._source.label, f"cannot read: {err}", sample=index,
                                       file=file or None) from None

    def _join(self, group: list[tuple[int, str, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """One feed from consecutive samples: concatenated on axis 0, the only dim allowed to differ."""
        if len(group) == 1:
            return group[0][2]
        first, last = group[0][0], group[-1][0]
        feed = {}
        for spec in self._specs:
            arrays = [sample[spec.name] for _, _, sample in group]
            for index, file, sample in group:
                array = sample[spec.name]
                if array.ndim == 0 or array.shape[1:] != arrays[0].shape[1:]:
                    problem = ("is a scalar, so samples cannot be batched" if array.ndim == 0 else
                               f"has shape {array.shape}, which cannot be batched with sample {first}'s "
                               f"{arrays[0].shape}; only dim 0 may differ, so feed variable-length samples "
                               "with batch_size=1")
                    raise CalibrationDataError(self._source.label, problem, sample=index, file=file or None,
                                               input=spec.name)
            feed[spec.name] = np.concatenate(arrays)
            rows, want = feed[spec.name].shape[0], spec.shape[0] if spec.shape else None
            if isinstance(want, int) and rows != want:
                raise CalibrationDataError(self._source.label, f"samples {first}-{last} make a batch of {rows} rows, "
                                           f"the model expects {want}", sample=first, input=spec.name)
        return feed


def open_calibration_data(source: Any, specs: list[InputSpec], *, image_recipe: ImageRecipe | None = None,
                          batch_size: int | None = None) -> CalibrationData:
    """Open `source` (see the module docstring for the kinds) as calibration data for inputs `specs`.

    `batch_size` None batches as the module docstring says; an int joins that many
    samples into each feed. Path sources are listed and sized now, so a missing or empty
    source fails here rather than in the middle of a compile.
    """
    specs = list(specs)
    reader = _open_source(source, specs, image_recipe)
    fixed = _fixed_batch(specs)
    if batch_size is None:
        batch = fixed if fixed is not None and reader.single_rows else 1
    elif batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    elif reader.single_rows and fixed is not None and batch_size != fixed:
        raise CalibrationDataError(reader.label, f"batch_size={batch_size}, but the model's inputs have a "
                                   f"fixed batch of {fixed}")
    else:
        batch = batch_size
    drop_tail = fixed is not None and batch > 1
    count = reader.count()
    if count is not None:
        _check_enough(reader.label, count, batch, drop_tail)
    return CalibrationData(reader, specs, batch, drop_tail)


# -- validation -----------------------------------------------------------------------


class _Bad(Exception):
    """A problem with one sample; CalibrationData adds the source and sample index."""

    def __init__(self, problem: str, input: str | None = None) -> None:
        super().__init__(problem)
        self.problem, self.input = problem, input


def _check_enough(label: str, samples: int, batch: int, drop_tail: bool) -> None:
    if samples == 0:
        raise CalibrationDataError(label, "no samples")
    if drop_tail and samples < batch:
        raise CalibrationDataError(label, f"{samples} sample(s), fewer than one batch of {batch} "
                                   "(the model's fixed batch size)")


def _check_sample(raw: Any, specs: list[InputSpec], whole: bool) -> dict[str, np.ndarray]:
    """The sample as {name: array}, checked against the specs; dim 0 only when `whole` (unbatched)."""
    sample = _named(raw, specs)
    names = [spec.name for spec in specs]
    for spec in specs:
        if spec.name not in sample:
            raise _Bad(f"missing (the sample has: {', '.join(map(str, sample)) or 'nothing'})", spec.name)
    for name in sample:
        if name not in names:
            raise _Bad(f"is not an input of the model (its inputs: {', '.join(names)})", str(name))
    sizes: dict[str, tuple[int, str]] = {}
    return {spec.name: _check_array(spec, sample[spec.name], whole, sizes) for spec in specs}


def _named(raw: Any, specs: list[InputSpec]) -> Mapping:
    """Dicts as they are; tuples and lists matched to the inputs in order; one array to the only input."""
    if isinstance(raw, Mapping):
        return raw
    names = [spec.name for spec in specs]
    if isinstance(raw, (tuple, list)):
        if len(raw) != len(names):
            raise _Bad(f"has {len(raw)} items, but the model has {len(names)} input(s) ({', '.join(names)}); "
                       "yield dicts keyed by input name, or leave out extra items such as labels")
        return dict(zip(names, raw))
    if len(names) != 1:
        raise _Bad(f"is a single {type(raw).__name__}, but the model has {len(names)} inputs ({', '.join(names)}); "
                   "yield dicts keyed by input name")
    return {names[0]: raw}


def _check_array(spec: InputSpec, value: Any, whole: bool, sizes: dict[str, tuple[int, str]]) -> np.ndarray:
    try:
        array = _as_array(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise _Bad(f"is not an array: {err}", spec.name) from None
    cast = array.dtype == np.float64 and spec.dtype == np.float32
    if cast:
        with np.errstate(over="ignore"):  # out-of-range values become Inf, reported below
            array = array.astype(np.float32)
    elif array.dtype != spec.dtype:
        raise _Bad(f"has dtype {array.dtype}, the model expects {spec.dtype}", spec.name)
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise _Bad(f"has shape {array.shape} (rank {array.ndim}), the model expects rank {len(spec.shape)} "
                       f"{_shape_text(spec.shape)}", spec.name)
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(want, int) and want != got and (whole or axis > 0):
                raise _Bad(f"dim {axis} is {got}, the model expects {want} (shape {array.shape}, "
                           f"model {_shape_text(spec.shape)})", spec.name)
            if isinstance(want, str):
                size, other = sizes.setdefault(want, (got, spec.name))
                if size != got:
                    raise _Bad(f"dim {axis} ({want!r}) is {got}, but input {other!r} has {want!r} = {size} "
                               "in the same sample", spec.name)
    if ir.DType.from_numpy(spec.dtype).is_float:
        bad = ~np.isfinite(array)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            after = " after the float64 -> float32 cast" if cast else ""
            raise _Bad(f"contains {int(bad.sum())} NaN/Inf value(s){after}, the first ({array[at]}) at index {at}",
                       spec.name)
    return array


def _as_rows(value: Any) -> np.ndarray:
    """A dict's value: an array, or a list of variable-shape arrays as a ragged object array."""
    if isinstance(value, (list, tuple)) and value:
        items = [_as_array(v) for v in value]
        if len({item.shape for item in items}) > 1:
            ragged = np.empty(len(items), dtype=object)
            ragged[:] = items
            return ragged
    return _as_array(value)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor; torch itself stays an optional dependency
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _shape_text(shape: tuple) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    """The static dim 0 every input shares, or None (symbolic, unknown, or inputs disagree)."""
    firsts = {spec.shape[0] if spec.shape else None for spec in specs}
    if len(firsts) == 1:
        (first,) = firsts
        return first if isinstance(first, int) else None
    return None


def _single_input(specs: list[InputSpec], label: str, what: str,
                  hint: str = "; key the arrays by input name (an .npz, or dicts)", **where: Any) -> str:
    """The name of the model's only input, for sources that hold unnamed arrays."""
    if len(specs) != 1:
        names = ", ".join(spec.name for spec in specs)
        raise CalibrationDataError(label, f"{what} feeds one input, but the model has {len(specs)} ({names}){hint}",
                                   **where)
    return specs[0].name


# -- sources --------------------------------------------------------------------------


class _Source:
    """Where samples come from: `samples()` yields (file or "", load) so unread shards cost nothing."""

    label: str
    single_rows = False  # every sample is one row (npz rows, images): batching may group them

    def count(self) -> int | None:
        """The number of samples, when known without reading them."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the samples come from and how they are read, for the report."""
        count = self.count()
        return f"{self.label}: {'an unknown number of' if count is None else count} {self.unit}"

    unit = "samples, one per item"

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError


class _Rows(_Source):
    """Arrays whose axis 0 indexes the samples: an .npz or .npy file, a dict of arrays, or one array.

    How axis 0 is read (`reading`) follows from the arrays, never from a guess per sample:
    * rows: each index is one row of a batch (rank = the input's rank);
    * stacked feeds: each index is a whole feed with its own batch axis (rank = the input's
      rank + 1 for every input), what `np.stack([feed["x"] for feed in feeds])` makes;
    * ragged: a 1-D object array of arrays of different shapes (what `np.savez` writes for a
      list of variable-shape samples), each one sample with or without its batch axis.
    """

    def __init__(self, label: str, specs: list[InputSpec], path: Path | None = None, name: str | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None) -> None:
        self.label, self._path, self._name, self._arrays = label, path, name, arrays
        headers = ({key: (a.shape, a.dtype) for key, a in arrays.items()} if arrays is not None
                   else _file_headers(path, name))
        for key, (shape, _) in headers.items():
            if not shape:
                raise CalibrationDataError(label, f"array {key!r} is a scalar; samples go on axis 0")
        lengths = {shape[0] for shape, _ in headers.values()}
        if len(lengths) > 1:
            found = ", ".join(f"{key} has {shape[0]}" for key, (shape, _) in headers.items())
            raise CalibrationDataError(label, f"arrays hold different numbers of samples: {found}")
        self._count = lengths.pop() if lengths else 0
        self._ranks = {spec.name: len(spec.shape) for spec in specs if spec.shape is not None}
        self.reading = _reading(label, headers, self._ranks)
        self.single_rows = self.reading == "rows"

    @property
    def unit(self) -> str:
        return {"rows": "rows of axis 0", "stacked": "stacked feeds (axis 0 indexes whole feeds)",
                "ragged": "ragged samples (an object array of variable-shape arrays)"}[self.reading]

    def count(self) -> int:
        return self._count

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        if self._arrays is not None:
            arrays = self._arrays
        else:
            try:
                arrays = _read_file(self._path, self._name, mmap=self.reading != "ragged", label=self.label)
            except _UNREADABLE as err:
                raise CalibrationDataError(self.label, f"cannot read: {err}") from None
        for row in range(self._count):
            if self.reading == "rows":
                yield "", partial(_row, arrays, row)
            else:
                yield "", partial(_item, arrays, row, self._ranks if self.reading == "ragged" else {})

    def fingerprint(self) -> str:
        if self._path is not None:
            return _stamps([self._path])
        return _content_hash([self._arrays])


def _reading(label: str, headers: dict[str, tuple[tuple, np.dtype]], ranks: dict[str, int]) -> str:
    """How axis 0 of these arrays is read (see `_Rows`); `ranks` are the inputs' ranks where known."""
    ragged = [key for key, (_, dtype) in headers.items() if dtype.hasobject]
    if ragged:
        flat = [key for key in ragged if len(headers[key][0]) != 1]
        if flat or len(ragged) != len(headers):
            bad = (flat or sorted(set(headers) - set(ragged)))[0]
            raise CalibrationDataError(label, f"array {bad!r}: ragged samples are a 1-D object array per input, "
                                       "and every input's array must be one")
        return "ragged"
    stacked = [key for key, (shape, _) in headers.items() if key in ranks and len(shape) == ranks[key] + 1]
    if stacked and len(stacked) == len(headers) == len(ranks):
        return "stacked"
    return "rows"


def _row(arrays: Mapping[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    return {key: np.asarray(array[row:row + 1]) for key, array in arrays.items()}


def _item(arrays: Mapping[str, np.ndarray], index: int, unbatched_ranks: dict[str, int]) -> dict[str, np.ndarray]:
    """One stacked feed or ragged sample; an item one rank short of `unbatched_ranks` gets its batch axis."""
    items = {key: np.asarray(array[index:index + 1])[0] for key, array in arrays.items()}
    return {key: item[None] if item.ndim + 1 == unbatched_ranks.get(key) else item for key, item in items.items()}


def _file_headers(path: Path, name: str | None) -> dict[str, tuple[tuple, np.dtype]]:
    """Array shapes and dtypes from the headers alone, so sizing a large file reads almost nothing."""
    try:
        if name is not None:
            with path.open("rb") as f:
                shape, _, dtype = _header(f)
                return {name: (shape, dtype)}
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for member in archive.namelist():
                with archive.open(member) as f:
                    shape, _, dtype = _header(f)
                    headers[member.removesuffix(".npy")] = (shape, dtype)
            return headers
    except _UNREADABLE as err:
        raise CalibrationDataError(str(path), f"cannot read: {err}") from None


def _header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, Fortran order, dtype) of the .npy stream at `f`, which is left at the array's data."""
    version = np.lib.format.read_magic(f)  # 3.0 differs from 2.0 only in how field names are encoded
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = read(f)
    except TypeError as err:  # numpy sorts the header's keys: str beside bytes keys cannot be ordered
        raise ValueError(f"the .npy header is malformed: {err}") from None
    return tuple(shape), fortran, dtype


def _read_file(path: Path, name: str | None, mmap: bool = False, label: str | None = None) -> dict[str, np.ndarray]:
    """An .npy (as {name: array}) or an .npz (all its arrays); object arrays through `safe_pickle`.

    With `mmap`, C-ordered arrays of an .npy, and of .npz members stored uncompressed
    (as np.savez writes them), are read a row at a time from the file, so memory does
    not grow with the data set (memory-mapped pages would count as resident once read);
    other arrays are read whole.
    """
    label = label or str(path)
    if name is not None:
        whole = partial(_load_npy_file, path, label, name)
        return {name: _rows_or_whole(path, 0, whole) if mmap else whole()}
    with zipfile.ZipFile(path) as archive:
        arrays = {}
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            whole = partial(_load_member, archive, info, label, key)
            stored = mmap and info.compress_type == zipfile.ZIP_STORED
            arrays[key] = _rows_or_whole(path, _member_start(path, info), whole) if stored else whole()
        return arrays


def _load_npy_file(path: Path, label: str, key: str) -> np.ndarray:
    with path.open("rb") as f:
        return _load_npy(f, label, key)


def _load_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, key: str) -> np.ndarray:
    with archive.open(info) as f:
        return _load_npy(f, label, key)


def _load_npy(f, label: str, key: str) -> np.ndarray:
    """One .npy stream; an object array is unpickled admitting numpy arrays and nothing else."""
    start = f.tell()
    _, _, dtype = _header(f)
    if not dtype.hasobject:
        f.seek(start)
        return np.lib.format.read_array(f, allow_pickle=False)
    try:
        return safe_pickle.load_arrays(f)
    except safe_pickle.RefusedPickle as refused:
        raise CalibrationDataError(label, f"array {key!r}: {refused}") from None


def _member_start(path: Path, member: zipfile.ZipInfo) -> int:
    """Where a stored zip member's bytes begin: after the 30-byte local header, its name and extra field."""
    with path.open("rb") as f:
        f.seek(member.header_offset)
        local = f.read(30)
    name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    return member.header_offset + 30 + name_length + extra_length


def _rows_or_whole(path: Path, start: int, whole: Callable[[], np.ndarray]) -> np.ndarray | _RowFile:
    with path.open("rb") as f:
        f.seek(start)
        shape, fortran, dtype = _header(f)
        offset = f.tell()
    if fortran or dtype.hasobject or not shape:
        return whole()
    return _RowFile(path, offset, shape, dtype)


class _RowFile:
    """Rows of an array stored in a file, read on demand with one pread per slice."""

    def __init__(self, path: Path, offset: int, shape: tuple, dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        first, stop, _ = rows.indices(self.shape[0])
        count = max(stop - first, 0)
        with self.path.open("rb") as f:
            data = os.pread(f.fileno(), count * self.row_bytes, self.offset + first * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))


class _Folder(_Source):
    """A folder of .npz/.npy files, one sample each, in sorted order of relative path."""

    unit = "files, one sample each"

    def __init__(self, folder: Path, specs: list[InputSpec]) -> None:
        self.label, self._files = str(folder), _list_files(folder, _ARRAY_SUFFIXES)
        if not self._files:
            hint = " (it holds images: pass an image_recipe)" if _list_files(folder, _IMAGE_SUFFIXES) else ""
            raise CalibrationDataError(self.label, f"no samples: no .npy or .npz files{hint}")
        self._name = None  # the input .npy files feed, when there are any
        npy = [index for index, path in enumerate(self._files) if path.suffix == ".npy"]
        if npy:
            self._name = _single_input(specs, self.label, "a .npy file", sample=npy[0], file=str(self._files[npy[0]]))

    def count(self) -> int:
        return len(self._files)

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for path in self._files:
            name = self._name if path.suffix == ".npy" else None
            yield str(path), partial(_read_sample_file, path, name)

    def fingerprint(self) -> str:
        return _stamps(self._files)


def _read_sample_file(path: Path, name: str | None) -> dict[str, np.ndarray]:
    try:
        return _read_file(path, name)
    except CalibrationDataError as err:
        raise _Bad(err.problem) from None
    except _UNREADABLE as err:
        raise _Bad(f"cannot read: {err}") from None


class _Images(_Source):
    """A folder of images, one sample (one row) each, in sorted order of relative path."""

    single_rows = True
    unit = "images, one row each"

    def __init__(self, folder: Path, specs: list[InputSpec], recipe: ImageRecipe) -> None:
        self.label, self._recipe = str(folder), recipe
        name = _single_input(specs, self.label, "an image folder", hint="")
        try:
            import PIL.Image  # noqa: F401  (checked now, imported again where images are decoded)
        except ImportError:
            raise CalibrationDataError(self.label, "reading images needs Pillow: "
                                       "pip install 'qcompiler[images]'") from None
        self._dtype = np.dtype(recipe.dtype or specs[0].dtype)
        if not np.can_cast(np.uint8, self._dtype) or (self._dtype.kind in "iu" and recipe.normalizes):
            raise CalibrationDataError(self.label, f"an ImageRecipe cannot make {self._dtype} pixels for this input "
                                       "(integer inputs take raw 0..255 pixels: scale=1, mean 0, std 1)",
                                       input=name)
        self._files = _list_files(folder, _IMAGE_SUFFIXES)
        if not self._files:
            raise CalibrationDataError(self.label, f"no samples: no image files ({', '.join(sorted(_IMAGE_SUFFIXES))})")

    def count(self) -> int:
        return len(self._files)

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for path in self._files:
            yield str(path), partial(_read_image, path, self._recipe, self._dtype)

    def fingerprint(self) -> str:
        return _stamps(self._files) + f"|{self._recipe!r}|{self._dtype}"


def _read_image(path: Path, recipe: ImageRecipe, dtype: np.dtype) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _Bad(f"cannot read the image: {err}") from None
    width, height = image.size
    if recipe.resize is not None:  # the shorter side to `resize`, as torchvision's Resize(int) does
        short, long = min(width, height), max(width, height)
        other = int(recipe.resize * long / short)
        width, height = (recipe.resize, other) if width <= height else (other, recipe.resize)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    if recipe.crop is not None:
        crop_h, crop_w = recipe.crop
        if crop_h > height or crop_w > width:
            raise _Bad(f"is {width}x{height} after resizing, smaller than the {crop_w}x{crop_h} crop")
        top, left = int(round((height - crop_h) / 2)), int(round((width - crop_w) / 2))
        image = image.crop((left, top, left + crop_w, top + crop_h))
    pixels = np.asarray(image, dtype=np.float32)
    if recipe.channels == "BGR":
        pixels = pixels[..., ::-1]
    if recipe.normalizes:
        pixels = (pixels * np.float32(recipe.scale) - np.float32(recipe.mean)) / np.float32(recipe.std)
    if recipe.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None], dtype=dtype)


class _Iterable(_Source):
    """A re-iterable object (list, DataLoader): each pass iterates it afresh."""

    def __init__(self, items: Any) -> None:
        self.label, self._items = f"<{type(items).__name__}>", items

    def count(self) -> int | None:
        try:
            return len(self._items)
        except TypeError:  # generators, functions, DataLoaders over an IterableDataset
            return None

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for item in self._fresh():
            yield "", partial(_given, item)

    def fingerprint(self) -> str:
        return _content_hash(self._fresh())

    def _fresh(self) -> Iterable:
        return self._items


class _Factory(_Iterable):
    """A function returning a fresh iterable, called once per pass: generators that can be replayed."""

    def __init__(self, make: Callable[[], Iterable]) -> None:
        super().__init__(make)
        self.label = f"<{getattr(make, '__qualname__', type(make).__name__)}()>"

    def _fresh(self) -> Iterable:
        return self._items()


class _Once(_Iterable):
    """A generator or other iterator: it can be read once, so a second pass is an error."""

    _READ_AGAIN = ("can be read only once, and this is a second pass over the data (the calibrate pass "
                   "reads it several times); pass a list, or a function returning a fresh iterator "
                   "(e.g. lambda: make_batches())")

    def __init__(self, items: Iterator) -> None:
        super().__init__(items)
        self._used = False

    def fingerprint(self) -> str:
        raise CalibrationDataError(self.label, "an iterator cannot be fingerprinted without using it up; pass a "
                                   "list, or a function returning a fresh iterator")

    def _fresh(self) -> Iterable:
        if self._used:
            raise CalibrationDataError(self.label, self._READ_AGAIN)
        self._used = True
        return self._items


def _given(item: Any) -> Any:
    return item


def _open_source(source: Any, specs: list[InputSpec], recipe: ImageRecipe | None) -> _Source:
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), specs, recipe)
    if recipe is not None:
        raise ValueError(f"image_recipe applies to a folder of images, not to a {type(source).__name__}")
    if isinstance(source, Mapping):
        return _Rows("<dict of arrays>", specs, arrays={key: _as_rows(a) for key, a in source.items()})
    if isinstance(source, np.ndarray):
        return _Rows("<array>", specs, arrays={_single_input(specs, "<array>", "an array"): source})
    if isinstance(source, Iterable):
        return _Once(source) if iter(source) is source else _Iterable(source)
    if callable(source):
        return _Factory(source)
    raise TypeError(f"cannot read calibration data from a {type(source).__name__}: expected a path, a dict of "
                    "arrays, an iterable of samples or a function returning one")


def _open_path(path: Path, specs: list[InputSpec], recipe: ImageRecipe | None) -> _Source:
    label = str(path)
    if path.is_dir():
        return _Images(path, specs, recipe) if recipe is not None else _Folder(path, specs)
    if not path.exists():
        raise CalibrationDataError(label, "no such file or folder")
    if recipe is not None:
        raise CalibrationDataError(label, "an image_recipe needs a folder of images")
    if path.suffix == ".npz":
        return _Rows(label, specs, path)
    if path.suffix == ".npy":
        return _Rows(label, specs, path, _single_input(specs, label, "a .npy file"))
    raise CalibrationDataError(label, "not an .npz or .npy file, or a folder")


def _list_files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """Files under `folder` with one of `suffixes`, sorted by relative path; hidden ones skipped."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in relative.parts)
        if path.suffix.lower() in suffixes and not hidden and path.is_file():
            found.append((relative.as_posix(), path))
    return [path for _, path in sorted(found)]


def _stamps(paths: list[Path]) -> str:
    """Path, size and mtime of each file: the quick check make and rsync use."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _content_hash(items: Iterable) -> str:
    digest = hashlib.sha256()
    for item in items:
        _hash_into(digest, item)
        digest.update(b"\n")
    return digest.hexdigest()


def _hash_into(digest: Any, value: Any) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"{key}=".encode())
            _hash_into(digest, value[key])
    elif isinstance(value, (tuple, list)):
        digest.update(b"(")
        for item in value:
            _hash_into(digest, item)
        digest.update(b")")
    else:
        array = np.ascontiguousarray(_as_array(value))
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(repr(array.tolist()).encode() if array.dtype.hasobject else array.reshape(-1).view(np.uint8))
