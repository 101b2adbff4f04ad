"""Writing a small file whole or not at all.

The text goes to a temporary sibling that is then linked (new files) or renamed
(replacements) into place: a failed write leaves no half-written file, and a new
file never replaces one that appeared meanwhile.
"""

from __future__ import annotations

import os
import tempfile
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


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
