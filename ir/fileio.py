"""Files: atomic output, and read-only mapping of the weight files models keep beside them.

1. Output goes to temporary files beside the targets, renamed into place on success. For
   several files (a model and its external data), a target that existed is kept aside
   until every rename succeeded and put back if one fails: a failure leaves neither new
   file, and the old pair as it was.
2. Weight files are memory-mapped read-only, once per file, and tensors are numpy views
   of the mapping: nothing is read until used, and the kernel can drop clean pages under
   pressure. A mapping closes when the last view of it goes (no registry keeps it).
3. `mapped_region` tells whether an array lies in such a mapping (file and offset), so
   export can point at the bytes already on disk instead of writing them again;
   `release_pages` drops a mapped array's pages from the process's resident set once it
   was read (they stay in the page cache); `release_mapped_pages` those of every open
   mapping, for when a phase that read weights is over. A page read again faults back in.
4. `MappedArrays` writes arrays of the program's own once to files of a temporary folder
   and reads them back as mapped views, so they export as weights loaded from a file do:
   an analysis that exports many variants of one model writes its shared weights once.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path`, on any error it is removed."""
    with atomic_outputs([path]) as (staged,):
        yield staged


@contextmanager
def atomic_outputs(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield a temporary path per target; on success all replace their targets, else none does (rule 1)."""
    targets = [Path(p) for p in paths]
    staged: list[Path] = []
    try:
        for target in targets:
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            staged.append(Path(name))
        yield staged
        umask = os.umask(0)
        os.umask(umask)
        for path in staged:
            os.chmod(path, 0o666 & ~umask)
        replace_together(staged, targets)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)


def replace_together(staged: Sequence[Path], targets: Sequence[Path]) -> None:
    """Rename each staged file onto its target; on a failure, put back the targets already replaced (rule 1)."""
    kept: list[tuple[Path, Path | None]] = []
    try:
        for source, target in zip(staged, targets):
            aside = None
            if len(targets) > 1 and target.exists():
                aside = target.with_name(f".{target.name}.{os.getpid()}.old")
                os.replace(target, aside)
            kept.append((target, aside))
            os.replace(source, target)
    except BaseException:
        for target, aside in reversed(kept):
            if aside is not None:
                os.replace(aside, target)
            else:
                target.unlink(missing_ok=True)
        raise
    for _, aside in kept:
        if aside is not None:
            aside.unlink(missing_ok=True)


_MAPPINGS: weakref.WeakSet[MappedFile] = weakref.WeakSet()  # open ones: a weak set keeps none open


class MappedFile(mmap.mmap):
    """A read-only mapping of a whole file, remembering which file (path and inode) it is."""

    path: Path
    identity: tuple[int, int]  # (st_dev, st_ino) when mapped
    address: int


def map_file(path: Path) -> MappedFile:
    """Map `path` read-only (rule 2). The caller checks sizes; an empty file cannot be mapped."""
    with open(path, "rb") as file:
        mapped = MappedFile(file.fileno(), 0, access=mmap.ACCESS_READ)
        stat = os.fstat(file.fileno())
    mapped.path = path.resolve()
    mapped.identity = (stat.st_dev, stat.st_ino)
    probe = np.frombuffer(mapped, np.uint8, count=1)
    mapped.address = probe.ctypes.data
    del probe  # an exported buffer would keep the mapping from closing
    _MAPPINGS.add(mapped)
    return mapped


def mapped_view(mapped: MappedFile, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """The read-only array of `shape` at byte `offset` of the mapping."""
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(mapped, dtype, count=count, offset=offset).reshape(shape)


def mapped_region(array: np.ndarray) -> tuple[MappedFile, int] | None:
    """The mapping `array` lies in and its byte offset there, for a C-contiguous view of one (rule 3)."""
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    mapped = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mapped, MappedFile) or not array.flags.c_contiguous:
        return None
    return mapped, array.ctypes.data - mapped.address


def release_pages(array: np.ndarray) -> None:
    """Drop the whole pages of a mapped `array` from the resident set; a later read faults them back in."""
    region = mapped_region(array)
    if region is not None:
        mapped, offset = region
        start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
        _dont_need(mapped, start, (offset + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE - start)


def release_mapped_pages() -> None:
    """Drop the pages of every open mapping from the resident set (rule 3)."""
    for mapped in list(_MAPPINGS):
        _dont_need(mapped, 0, len(mapped))


def _dont_need(mapped: MappedFile, start: int, length: int) -> None:
    if length > 0 and hasattr(mmap, "MADV_DONTNEED") and not mapped.closed:
        mapped.madvise(mmap.MADV_DONTNEED, start, length)


class MappedArrays:
    """Read-only mapped copies of arrays, each written once to a file of a temporary folder (rule 4).

    Arrays under `min_bytes`, and those without a raw layout (strings, objects), are
    returned as they are: the proto holds small tensors inline anyway. An array maps once:
    asked again, it gets the same view (the entry holds the array, so its identity is not
    reused). The folder goes on close() or when the object is collected; views already
    handed out keep their mapping.
    """

    def __init__(self, min_bytes: int = 1024) -> None:
        self.min_bytes = min_bytes
        self._folder = tempfile.TemporaryDirectory(prefix="qcompiler-arrays-")
        self._views: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def map(self, array: np.ndarray) -> np.ndarray:
        """`array`, or a read-only view of a mapped copy of it (equal contents, dtype and shape)."""
        if array.nbytes < self.min_bytes or array.dtype.kind in "OSUV" or mapped_region(array) is not None:
            return array
        if id(array) not in self._views:
            path = Path(self._folder.name) / f"{len(self._views) + 1}.bin"
            with open(path, "wb") as file:
                file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            self._views[id(array)] = (array, mapped_view(map_file(path), array.dtype, array.shape, 0))
        return self._views[id(array)][1]

    def close(self) -> None:
        self._folder.cleanup()
