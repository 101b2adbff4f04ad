"""Writing a file or a directory whole or not at all.

The output goes to a temporary sibling that is then linked or renamed into
place: a failed write leaves nothing half written, and a new output never
replaces one that appeared meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
  """Writes ``text`` to ``path``; FileExistsError if it exists and not ``overwrite``."""
  path = Path(path)
  if not overwrite and path.exists():
    raise FileExistsError(f"{str(path)!r} exists; jaxfp4 never writes over an existing file.")
  fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    if overwrite:
      os.replace(tmp, path)
    else:
      os.link(tmp, path)  # fails rather than replace a file created meanwhile
  finally:
    Path(tmp).unlink(missing_ok=True)
  return path


def refuse_nonempty_dir(out_dir: Path) -> None:
  """FileExistsError unless ``out_dir`` is absent or an empty directory."""
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise FileExistsError(f"`out_dir` {str(out_dir)!r} exists and is not empty; "
                          "jaxfp4 never writes over files.")


@contextlib.contextmanager
def directory_atomic(out_dir: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary sibling of ``out_dir`` that becomes ``out_dir`` when the
  block ends without error, and is removed otherwise.

  ``out_dir`` must be absent or an empty directory (check it first, e.g. with
  :func:`refuse_nonempty_dir`); the rename fails rather than replace anything
  that appeared meanwhile.
  """
  out_dir = Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0o700 would outlive the rename
  try:
    yield tmp
    if out_dir.is_dir():
      out_dir.rmdir()  # empty (checked by the caller); fails if something appeared meanwhile
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
