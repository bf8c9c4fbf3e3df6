"""Reading files that may come from anywhere without running code from them.

A pickle is a program: unpickled naively, a crafted file calls any function it names (os.system, ...).
ganlab reads every pickle-based format through an unpickler that allows only the globals the format
needs and refuses anything else with one GanlabError naming the file and the offending global; there is
no fall-back to an unrestricted load, not even behind a flag.

- torch files (checkpoints, state dicts, the classifier cache, Inception weights): `load_torch`, torch's
  own weights-only unpickler (tensors, plain containers, a few torch types);
- plain pickles (CIFAR-10 batches): `load_pickle` with the format's allowed globals, e.g.
  `NUMPY_ARRAYS` (numpy arrays and dtypes, bytes as Python 3 pickles them);
- a third-party loader that would unpickle naively (torch-fidelity's Inception weights): `vetted_copy`
  loads the file weights-only first and hands that loader a copy ganlab wrote itself.
"""

from __future__ import annotations

import io
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from ganlab.errors import GanlabError

TRUST_DOC = "README, 'What ganlab trusts'"


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside its format's allowed set."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def numpy_arrays() -> dict[tuple[str, str], Any]:
    """The globals a pickle of plain containers and numpy arrays needs (CIFAR-10's batches): numpy's array
    and scalar reconstructors (under numpy 1.x's and 2.x's module names), ndarray, dtype, and
    _codecs.encode (how Python 3 pickles bytes at protocol 2). An object array's items go through the
    same unpickler, so they too are only what this set allows."""
    import _codecs
    import importlib

    import numpy as np

    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _codecs.encode, ("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, allowed: dict[tuple[str, str], Any], persistent_load: Callable | None = None, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = allowed
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str):
        target = self._allowed.get((module, name))
        if target is None:
            raise RefusedGlobal(f"{module}.{name}")
        return target


def refusal(path: Path, name: str, what: str, fix: str) -> GanlabError:
    return GanlabError(f"{path} was refused: it asks to run {name}, which {what} never holds, and ganlab runs no "
                       f"code from a file it reads ({TRUST_DOC}). {fix}")


def load_pickle(path: Path, allowed: dict[tuple[str, str], Any], what: str, fix: str,
                persistent_load: Callable | None = None, **kwargs):
    """Unpickle `path` allowing only `allowed` ((module, name) -> the object to use); anything else is
    refused, naming the global. Other damage (truncation, not a pickle) is a GanlabError too."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _Unpickler(fh, allowed, persistent_load, **kwargs).load()
    except RefusedGlobal as exc:
        raise refusal(path, exc.name, what, fix) from None
    except GanlabError:
        raise
    except Exception as exc:
        raise GanlabError(f"{path} is not {what} ({type(exc).__name__}: {str(exc)[:160]}). {fix}") from None


_GLOBAL = re.compile(r"GLOBAL (\S+)")


def load_torch(path, what: str, fix: str, map_location="cpu"):
    """torch.load with weights_only=True; a refused global or a damaged file ends in one GanlabError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            raise refusal(Path(str(path)), found.group(1), what, fix) from None
        exc_text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GanlabError(f"{path} is truncated, corrupt or not {what} ({exc_text[:200]}). {fix}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GanlabError(f"{path} is truncated, corrupt or not {what} ({first[:200]}). {fix}") from None


def vetted_copy(path: Path, what: str, fix: str) -> tempfile.TemporaryDirectory:
    """For a loader that would unpickle `path` naively: the file is read weights-only here (refusing any global
    outside plain tensors), written anew by ganlab into a temporary dir, and that copy is what the loader gets.
    Returns the TemporaryDirectory; the copy is `Path(tmp.name) / path.name`."""
    state = load_torch(path, what, fix)
    tmp = tempfile.TemporaryDirectory(prefix="ganlab-vetted-")
    buf = io.BytesIO()
    torch.save(state, buf)
    (Path(tmp.name) / Path(path).name).write_bytes(buf.getvalue())
    return tmp


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks (what metrics.json and imported runs record)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
