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


def refuse_nonempty_dir(out_dir: Path, *, overwrite: bool = False, marker: str | None = None) -> None:
  """FileExistsError unless ``out_dir`` is absent or an empty directory.

  With ``overwrite``, a directory holding ``marker`` (a file the writer itself
  puts there, e.g. ``config.json``) may be replaced too; anything else is still
  refused, so a mistyped path never removes a folder that is not a checkpoint.
  """
  if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
    return
  if not overwrite:
    raise FileExistsError(f"`out_dir` {str(out_dir)!r} exists and is not empty; "
                          "jaxfp4 never writes over files unless asked to (overwrite=True).")
  if not out_dir.is_dir() or marker is None or not (out_dir / marker).is_file():
    raise FileExistsError(f"`out_dir` {str(out_dir)!r} exists and is not a directory this writer "
                          f"made (no {marker}); overwrite=True replaces only such a directory.")


@contextlib.contextmanager
def directory_atomic(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
  """Yields a temporary sibling of ``out_dir`` that becomes ``out_dir`` when the
  block ends without error, and is removed otherwise.

  ``out_dir`` must be absent or an empty directory (check it first, e.g. with
  :func:`refuse_nonempty_dir`); the rename fails rather than replace anything
  that appeared meanwhile. With ``overwrite`` an existing ``out_dir`` is moved
  aside, the new one renamed into place, and the old one deleted only then (a
  failure puts it back), so readers see the old or the new directory whole.
  """
  out_dir = Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0o700 would outlive the rename
  try:
    yield tmp
    if overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
      _replace_dir(tmp, out_dir)
      return
    if out_dir.is_dir():
      out_dir.rmdir()  # empty (checked by the caller); fails if something appeared meanwhile
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _replace_dir(new: Path, out_dir: Path) -> None:
  """Puts directory ``new`` in place of the existing ``out_dir``, then deletes the old one."""
  aside = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
  old = aside / "old"
  os.rename(out_dir, old)
  try:
    os.rename(new, out_dir)
  except BaseException:
    os.rename(old, out_dir)
    aside.rmdir()
    raise
  shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
