"""Output paths of the command line: checked before the work, written atomically.

No command writes over a file it reads, and an output that cannot be written
is reported before the work starts (not after an hour of analysis). A file is
written to a temporary sibling and renamed into place, so a failed write leaves
nothing half done.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
from typing import Iterable


class CommandError(Exception):
  """A user-facing failure: ``main`` prints it as one line and exits 1."""


def _read_files(inputs: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
  """The files a command reads: each input file, and every file of an input folder."""
  out: list[pathlib.Path] = []
  for p in inputs:
    p = pathlib.Path(p)
    if p.is_dir():
      out.extend(q for q in p.iterdir() if q.is_file())
    elif p.exists():
      out.append(p)
  return out


def _same(a: pathlib.Path, b: pathlib.Path) -> bool:
  try:
    return a.exists() and os.path.samefile(a, b)
  except OSError:
    return False


def check_output(parser: argparse.ArgumentParser, option: str, path: str | None, *,
                 inputs: Iterable[str | os.PathLike] = (), overwrite: bool = True) -> None:
  """Fails (usage error naming ``option`` and ``path``) unless ``path`` can be written.

  Refused: one of the files the command reads (``inputs``), a folder, a path
  under something that is not a folder, a folder that does not exist or that
  this user cannot write to, and, with ``overwrite=False``, an existing file.
  """
  if path is None:
    return
  p = pathlib.Path(path)
  for src in _read_files(inputs):
    if _same(p, src):
      parser.error(f"{option}: {path!r} is an input of this command ({str(src)!r}); "
                   "choose another output path, jaxfp4 never writes over a file it reads")
  if p.is_dir():
    parser.error(f"{option}: {path!r} is a folder; give a file path")
  if p.exists() and not overwrite:
    parser.error(f"{option}: {path!r} exists; choose a new path or remove it")
  parent = p.resolve().parent
  for up in (parent, *parent.parents):
    if up.exists():
      if not up.is_dir():
        parser.error(f"{option}: {path!r} lies under {str(up)!r}, which is a file, not a folder")
      break
  if not parent.is_dir():
    parser.error(f"{option}: the folder of {path!r} does not exist")
  try:  # the one reliable test of write permission (os.access is wrong for root and ACLs)
    with tempfile.NamedTemporaryFile(dir=parent, prefix=".jaxfp4-probe-"):
      pass
  except OSError as e:
    parser.error(f"{option}: cannot write to the folder of {path!r} ({e.strerror or e})")


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes ``text`` to ``path`` through a temporary sibling and an atomic rename."""
  from jaxfp4._src.io.files import write_text_atomic
  return write_text_atomic(path, text, overwrite=True)
