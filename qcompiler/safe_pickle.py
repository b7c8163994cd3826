"""Unpickling numpy arrays without executing code: what an object array in an .npy holds.

`np.save` writes an object array (a list of variable-shape arrays, say) as a pickle, and
`np.load(allow_pickle=True)` would run whatever callables that pickle names. Data files
are untrusted, so this unpickler resolves only the globals numpy's own array pickles
use: the array reconstructor, `ndarray` and `dtype`. Any other global (os.system,
builtins.eval, a class of some package) is refused before it is looked up, so nothing a
file names ever runs. What loads must be an object array whose items are numeric arrays.
"""

from __future__ import annotations

import io
import pickle
from typing import IO

import numpy as np

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array reconstructor, wherever this numpy keeps it
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedPickle(ValueError):
    """The pickle names something other than a numpy array, or is not a pickle of arrays."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"refused: the pickle names {module}.{name}, and only numpy arrays are "
                                "read from data files (nothing in them is executed)") from None

    def persistent_load(self, pid):
        raise RefusedPickle("refused: the pickle refers to external objects")


def load_arrays(f: IO[bytes]) -> np.ndarray:
    """The object array pickled in `f` (positioned after the .npy header), its items numeric arrays."""
    try:
        loaded = _ArrayUnpickler(f).load()
    except RefusedPickle:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError,
            MemoryError, io.UnsupportedOperation) as err:
        raise RefusedPickle(f"not a readable pickle of arrays: {err}") from None
    if not isinstance(loaded, np.ndarray) or loaded.dtype != object:
        raise RefusedPickle(f"holds a {type(loaded).__name__}, not an object array of arrays")
    for index, item in enumerate(loaded.flat):
        if not isinstance(item, np.ndarray) or item.dtype.hasobject:
            kind = type(item).__name__ if not isinstance(item, np.ndarray) else "object array"
            raise RefusedPickle(f"item {index} is a {kind}, not a numeric array")
    return loaded
