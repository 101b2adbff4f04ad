"""Reading the floating-point tensors of a ``.safetensors`` or ``.npz`` file one at a time.

A checkpoint can be larger than memory, so tensors are listed from the file
headers and loaded one by one: safetensors through :class:`jaxfp4.io.SafetensorsFile`
(bounds-checked, bfloat16 through ml_dtypes), npz through the ``.npy`` headers
inside the zip and ``np.load``'s lazy per-key access.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from typing import Any, Collection, Iterator, NamedTuple

import numpy as np

from jaxfp4._src.io.safetensors import DTYPES, SafetensorsFile

SUFFIXES = (".safetensors", ".npz")

# safetensors dtype tags as NumPy dtype names; a tag not here (the float8
# types, for instance) is shown as the tag and never yielded.
_ST_NAMES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16",
             "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
             "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
             "BOOL": "bool"}
_ST_TAGS = {dtype: tag for tag, dtype in DTYPES.items()}
_FLOATS = ("float64", "float32", "bfloat16", "float16")


class TensorInfo(NamedTuple):
  """Name, shape and dtype name of one tensor in a file."""

  name: str
  shape: tuple[int, ...]
  dtype: str

  @property
  def is_float(self) -> bool:
    """Whether :func:`iter_float_tensors` yields this tensor."""
    return self.dtype in _FLOATS


def _check_path(path: str | os.PathLike) -> tuple[pathlib.Path, str]:
  p = pathlib.Path(path)
  suffix = p.suffix.lower()
  if suffix not in SUFFIXES:
    raise ValueError(f"{str(p)!r}: unknown weight file type {p.suffix!r}; expected one of "
                     f"{SUFFIXES}.")
  if not p.is_file():
    raise FileNotFoundError(f"{str(p)!r}: no such file.")
  return p, suffix


def _read_errors() -> tuple[type[BaseException], ...]:
  """Exceptions that mean the file itself is bad (not a bug in the caller)."""
  return (OSError, EOFError, ValueError, zipfile.BadZipFile)


def _corrupt(p: pathlib.Path, e: BaseException) -> ValueError:
  return ValueError(f"{str(p)!r} could not be read as {p.suffix} (corrupt or truncated?): "
                    f"{type(e).__name__}: {e}")


def _npz_infos(p: pathlib.Path) -> list[TensorInfo]:
  """Reads the ``.npy`` headers of an npz without loading any data."""
  infos = []
  with zipfile.ZipFile(p) as zf:
    for member in zf.infolist():
      if not member.filename.endswith(".npy"):
        continue
      with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
      # np.save writes bfloat16 as raw 2-byte voids; such entries are not floats.
      name = dtype.name if dtype.kind == "f" else str(dtype)
      infos.append(TensorInfo(member.filename[:-4], tuple(shape), name))
  return infos


def list_tensors(path: str | os.PathLike) -> list[TensorInfo]:
  """Names, shapes and dtypes of every tensor in a file, without loading data.

  Args:
    path: a ``.safetensors`` or ``.npz`` file.

  Returns:
    One :class:`TensorInfo` per tensor, in file order; dtype names are NumPy's
    (``"bfloat16"`` for BF16), or the safetensors tag for other types.

  Raises:
    FileNotFoundError: if there is no such file.
    ValueError: for another extension or a file that cannot be parsed.

  Example:
    >>> import numpy as np, tempfile, os
    >>> from jaxfp4.analysis import list_tensors
    >>> f = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(f, w=np.ones((2, 3), np.float32), step=np.int64(7))
    >>> [tuple(t) for t in list_tensors(f)]
    [('w', (2, 3), 'float32'), ('step', (), 'int64')]
  """
  p, suffix = _check_path(path)
  try:
    if suffix == ".npz":
      return _npz_infos(p)
    with SafetensorsFile(p) as f:
      out = []
      for name in f.keys():
        info = f.info(name)
        tag = _ST_TAGS[info.dtype]
        out.append(TensorInfo(name, info.shape, _ST_NAMES.get(tag, tag)))
      return out
  except _read_errors() as e:
    raise _corrupt(p, e) from e


def iter_float_tensors(
    path: str | os.PathLike, *, names: Collection[str] | None = None,
) -> Iterator[tuple[str, Any]]:
  """Yields ``(name, array)`` for each floating-point tensor, one at a time.

  float32, bfloat16 and float16 tensors are yielded as stored (JAX arrays for
  safetensors, NumPy arrays for npz); float64 tensors are cast to float32,
  since :func:`jaxfp4.quantize_4bit` takes no float64. Integer, bool and other
  tensors (and npz entries NumPy saved as raw voids, such as bfloat16) are
  skipped. Only one tensor is in memory at a time.

  Args:
    path: a ``.safetensors`` or ``.npz`` file.
    names: if given, only these tensors are read (names not in the file or
      not float are ignored).

  Yields:
    ``(name, array)`` pairs in file order.

  Raises:
    FileNotFoundError: if there is no such file.
    ValueError: for another extension or a corrupt or truncated file.

  Example:
    >>> import numpy as np, tempfile, os
    >>> from jaxfp4.analysis import iter_float_tensors
    >>> f = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(f, w=np.ones((2, 3)), step=np.int64(7))
    >>> [(k, v.dtype.name) for k, v in iter_float_tensors(f)]
    [('w', 'float32')]
  """
  # Listed here, not inside the generator, so a bad path fails at the call.
  wanted = [t.name for t in list_tensors(path)
            if t.is_float and (names is None or t.name in names)]
  return _iter_float_tensors(pathlib.Path(path), wanted)


def _iter_float_tensors(p: pathlib.Path, wanted: list[str]) -> Iterator[tuple[str, Any]]:
  if not wanted:
    return
  try:
    if p.suffix.lower() == ".npz":
      with np.load(p, allow_pickle=False) as z:
        for name in wanted:
          a = z[name]
          yield name, (a.astype(np.float32) if a.dtype == np.float64 else a)
      return
    import jax.numpy as jnp  # deferred: listing a file needs no JAX
    with SafetensorsFile(p) as f:
      for name in wanted:
        a = f.get(name)
        yield name, jnp.asarray(a.astype(np.float32) if a.dtype == np.float64 else a)
  except _read_errors() as e:
    raise _corrupt(p, e) from e
