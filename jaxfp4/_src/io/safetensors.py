"""A streaming safetensors reader and writer on plain NumPy.

Format (huggingface/safetensors, docs "The format"): an unsigned 64-bit
little-endian header length N, N bytes of UTF-8 JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
byte after the header) plus an optional ``"__metadata__"`` string map, then the
tensor bytes, little-endian, row-major. Reading touches one tensor at a time, so
memory stays bounded by the largest tensor; every offset is checked against the
file size, so a truncated file fails naming the first tensor it cuts.

Why not the ``safetensors`` package: its numpy framework cannot return the
float8 dtypes (``F8_E4M3``, ``F8_E8M0``: MXFP4/NVFP4 scales; 0.8.0 raises
AttributeError on ``numpy.float8_e4m3fn``), so this reader would stay for
those anyway; it also memory-maps slices (``view``), names the tensor a
damaged file cuts, and reads a whole tensor with one copy (256 MiB of float32
on a 2-core VM: 0.09 s, ``safe_open(...).get_tensor`` 0.31 s). One reader
keeps the core at JAX, numpy and ml_dtypes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # the reference implementation's limit


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where a tensor lives in a safetensors file."""

  name: str
  dtype: np.dtype
  shape: tuple[int, ...]
  begin: int
  end: int

  @property
  def nbytes(self) -> int:
    return self.end - self.begin


class SafetensorsFile:
  """Reads tensors one at a time from a ``.safetensors`` file.

  Args:
    path: the file.

  Example:
    >>> import tempfile, numpy as np, jaxfp4.io
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = jaxfp4.io.write_safetensors(tmp.name + "/model.safetensors",
    ...                                    {"lm_head.weight": np.ones((4, 8), np.float32)})
    >>> with jaxfp4.io.SafetensorsFile(path) as f:
    ...   w = f.get("lm_head.weight")
    >>> w.shape, w.dtype
    ((4, 8), dtype('float32'))
    >>> tmp.cleanup()
  """

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"No safetensors file at {str(self.path)!r}.")
    self._file = open(self.path, "rb")
    try:
      self._read_header()
    except BaseException:
      self._file.close()
      raise

  def _read_header(self) -> None:
    size = os.fstat(self._file.fileno()).st_size
    head = self._file.read(8)
    if len(head) < 8:
      raise ValueError(f"{self.path}: not a safetensors file (shorter than its 8-byte header length).")
    (n,) = struct.unpack("<Q", head)
    if n > min(_MAX_HEADER, size - 8):
      raise ValueError(f"{self.path}: header length {n} exceeds the file ({size} bytes); "
                       "the file is truncated or not safetensors.")
    try:
      header = json.loads(self._file.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{self.path}: the header is not valid JSON ({e}).") from None
    if not isinstance(header, dict):
      raise ValueError(f"{self.path}: the header must be a JSON object.")
    self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    self._data_start = 8 + n
    data_size = size - self._data_start
    self._infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
      self._infos[name] = _parse_entry(self.path, name, entry, data_size)
    _check_layout(self.path, list(self._infos.values()), data_size)

  def __enter__(self) -> "SafetensorsFile":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._file.close()

  def keys(self) -> list[str]:
    return list(self._infos)

  def __contains__(self, name: str) -> bool:
    return name in self._infos

  def info(self, name: str) -> TensorInfo:
    if name not in self._infos:
      raise KeyError(f"{self.path}: no tensor named {name!r}.")
    return self._infos[name]

  def get(self, name: str) -> np.ndarray:
    """Reads one tensor into a fresh NumPy array."""
    info = self.info(name)
    # The file is little-endian; a big-endian host reads it as such and swaps below.
    out = np.empty(info.shape, info.dtype if sys.byteorder == "little" else info.dtype.newbyteorder("<"))
    self._file.seek(self._data_start + info.begin)
    # Straight into the array's memory: one copy out of the page cache.
    got = self._file.readinto(out.reshape(-1).view(np.uint8).data)
    if got != info.nbytes:
      raise ValueError(f"{self.path}: tensor {name!r} is truncated.")
    return out.astype(info.dtype, copy=False)


  def view(self, name: str) -> np.ndarray:
    """A read-only memory map of one tensor: slicing it reads only the slice's pages.

    Loaders that place a tensor shard by shard read each device's part from it.
    """
    info = self.info(name)
    if info.nbytes == 0 or not all(info.shape):
      return np.zeros(info.shape, info.dtype)
    if sys.byteorder != "little":
      return self.get(name)  # the file is little-endian; a big-endian host needs a swapped copy
    return np.memmap(self.path, dtype=info.dtype, mode="r", offset=self._data_start + info.begin,
                     shape=info.shape)


def _parse_entry(path: Path, name: str, entry, data_size: int) -> TensorInfo:
  if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
    raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}.")
  code = entry["dtype"]
  if code not in DTYPES:
    raise ValueError(f"{path}: tensor {name!r} has dtype {code!r}; supported: {sorted(DTYPES)}.")
  shape, offsets = entry["shape"], entry["data_offsets"]
  if not (isinstance(shape, list)
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
    raise ValueError(f"{path}: tensor {name!r} has a malformed shape {shape!r}.")
  if not (isinstance(offsets, list) and len(offsets) == 2
          and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
          and 0 <= offsets[0] <= offsets[1]):
    raise ValueError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r}.")
  dtype = DTYPES[code]
  if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
    raise ValueError(f"{path}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but "
                     f"{code}{shape} needs {math.prod(shape) * dtype.itemsize}.")
  if offsets[1] > data_size:
    raise ValueError(f"{path}: the file is truncated: tensor {name!r} ends at byte {offsets[1]} of "
                     f"the data section, which holds only {data_size} bytes.")
  return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def _check_layout(path: Path, infos: list[TensorInfo], data_size: int) -> None:
  """The format's rule for the data section: the tensors, sorted by offset, tile it
  exactly (no overlap, no hole, nothing after the last). Two names on the same
  bytes, or an offset shifted into a neighbour, would otherwise load silently."""
  at, prev = 0, None
  for info in sorted(infos, key=lambda i: (i.begin, i.end)):
    if info.begin < at:
      assert prev is not None  # at > 0 only after a first tensor
      raise ValueError(f"{path}: tensors {prev.name!r} (bytes [{prev.begin}, {prev.end})) and "
                       f"{info.name!r} (bytes [{info.begin}, {info.end})) overlap in the data section; "
                       "each byte must belong to one tensor.")
    if info.begin > at:
      where = f"after tensor {prev.name!r}" if prev else "before the first tensor"
      raise ValueError(f"{path}: bytes [{at}, {info.begin}) of the data section, {where} and before "
                       f"{info.name!r}, belong to no tensor; the offsets must be contiguous.")
    at, prev = info.end, info
  if at != data_size:
    raise ValueError(f"{path}: the data section holds {data_size} bytes but the tensors end at byte "
                     f"{at}; the offsets must cover it exactly.")


def _code(name: str, a: np.ndarray) -> str:
  dt = np.dtype(a.dtype)
  if dt not in _CODES:
    raise ValueError(f"Tensor {name!r} has dtype {dt}, which safetensors cannot store; "
                     f"supported: {sorted(str(d) for d in _CODES)}.")
  return _CODES[dt]


def _check_new(path: Path) -> None:
  if path.exists():
    raise FileExistsError(f"{str(path)!r} exists; jaxfp4 never writes over an existing file.")


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
  """Writes tensors to a new safetensors file.

  ``tensors`` may be a generator of ``(name, array)`` pairs: each array is
  written and dropped before the next is produced, so memory stays bounded by
  one tensor. The file appears under ``path`` only when complete.

  Args:
    path: the new file; an existing file is never replaced (FileExistsError).
    tensors: a mapping or an iterable of ``(name, array)``.
    metadata: string key/values for ``__metadata__``.

  Returns:
    The path written.

  Example:
    >>> import numpy as np, tempfile, os
    >>> from jaxfp4.io import SafetensorsFile, write_safetensors
    >>> path = write_safetensors(os.path.join(tempfile.mkdtemp(), "t.safetensors"),
    ...                          {"w": np.arange(4, dtype=np.float32)})
    >>> with SafetensorsFile(path) as f:
    ...   f.get("w").tolist()
    [0.0, 1.0, 2.0, 3.0]
  """
  path = Path(path)
  _check_new(path)
  meta = dict(metadata or {})
  if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
    raise ValueError("`metadata` must map str to str.")
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(tensors, (Mapping, list, tuple)):
    # Every array is at hand, so the header comes first and the bytes go
    # straight into the temporary sibling: one write of each byte.
    arrays = list(_arrays(tensors.items() if isinstance(tensors, Mapping) else tensors))
    header = _header(arrays)
    with _new_sibling(path) as out:
      _write_header(out, header, meta)
      for _, a in arrays:
        out.write(_le_bytes(a).data)
    return path
  # A stream (a generator): the header, which holds every offset, is known only at its end,
  # so the bytes go to a second sibling first and are appended after the header
  # by the kernel (copy_file_range), never held in memory all at once.
  header = {}
  with _scratch(path) as data:
    offset = 0
    for name, a in _arrays(tensors):
      if name in header:
        raise ValueError(f"Duplicate tensor name {name!r}.")
      header[name] = _entry(name, a, offset)
      data.write(_le_bytes(a).data)
      offset += a.nbytes
    data.flush()
    with _new_sibling(path) as out:
      _write_header(out, header, meta)
      out.flush()
      _append(data, out, offset)
  return path


def _entry(name: str, a: np.ndarray, offset: int) -> dict:
  if name == "__metadata__":
    raise ValueError(f"Reserved tensor name {name!r}.")
  return {"dtype": _code(name, a), "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}


def _header(arrays: list[tuple[str, np.ndarray]]) -> dict[str, dict]:
  header: dict[str, dict] = {}
  offset = 0
  for name, a in arrays:
    if name in header:
      raise ValueError(f"Duplicate tensor name {name!r}.")
    header[name] = _entry(name, a, offset)
    offset += a.nbytes
  return header


def _write_header(out, header: dict[str, dict], meta: dict[str, str]) -> None:
  full = ({"__metadata__": meta} if meta else {}) | header
  blob = json.dumps(full, separators=(",", ":")).encode("utf-8")
  blob += b" " * (-len(blob) % 8)  # 8-byte aligned data, as the reference writer does
  out.write(struct.pack("<Q", len(blob)))
  out.write(blob)


def _le_bytes(a: np.ndarray) -> np.ndarray:
  """``a``'s bytes, row-major and little-endian, as a flat uint8 view (no copy if it is already)."""
  a = np.ascontiguousarray(a)
  return a.astype(a.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)


def _append(src, dst, nbytes: int) -> None:
  """Appends the first ``nbytes`` of file ``src`` to ``dst`` (both flushed), inside
  the kernel where the platform can (Linux ``copy_file_range``), else through a buffer."""
  pos = 0
  if hasattr(os, "copy_file_range"):
    try:
      while pos < nbytes:
        n = os.copy_file_range(src.fileno(), dst.fileno(), nbytes - pos, pos)
        if n == 0:
          break
        pos += n
    except OSError:
      if pos:
        raise
      # Not supported between these files (EXDEV, ENOSYS, EINVAL): copy below.
  src.seek(pos)
  shutil.copyfileobj(src, dst, 2**24)


@contextlib.contextmanager
def _new_sibling(path: Path) -> Iterator:
  """A file object on a temporary sibling of ``path`` that is linked to ``path``
  when the block ends without error (failing rather than replace a file that
  appeared meanwhile) and removed in every case."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
  try:
    with os.fdopen(fd, "wb") as out:
      yield out
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0o600 would outlive the link
    _check_new(path)
    os.link(tmp, path)
  finally:
    Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def _scratch(path: Path) -> Iterator:
  """A temporary file beside ``path`` (same file system), removed at the end."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".data")
  try:
    with os.fdopen(fd, "w+b") as f:
      yield f
  finally:
    Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _arrays(items) -> Iterator[tuple[str, np.ndarray]]:
  for name, array in items:
    if not isinstance(name, str):
      raise ValueError(f"Tensor names must be str, got {name!r}.")
    yield name, np.asarray(array)
