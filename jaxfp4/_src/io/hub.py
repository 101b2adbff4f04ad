"""Resolving a Hugging Face Hub repo id to a local snapshot directory.

A path that exists is used as it is. Anything else shaped like a repo id
(``"name"`` or ``"org/name"``) goes through ``huggingface_hub.snapshot_download``,
which reads the local cache (``HF_HUB_CACHE`` / ``HF_HOME``, laid out as
``models--org--name/snapshots/<commit>/...`` with ``refs/<revision>`` naming
the commit) and downloads what is missing when online. With
``local_files_only`` (or ``HF_HUB_OFFLINE=1``) it never touches the network.

``huggingface_hub`` is optional: it is imported only when a repo id is given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The files a model directory needs; snapshot_download fetches only these.
PATTERNS = ("*.json", "*.safetensors", "*.md", "tokenizer.model", "*.txt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def offline() -> bool:
  """Whether ``HF_HUB_OFFLINE`` asks for no network (``1``, ``true``, ``yes``, ``on``)."""
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve(
    path: str | os.PathLike,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
  """A local directory for ``path``: itself if it exists, else the Hub snapshot of repo id ``path``.

  Args:
    path: a directory, or a repo id such as ``"Qwen/Qwen2.5-0.5B"``.
    revision: branch, tag or commit of the repo (None: ``main``).
    local_files_only: only the local cache; None means ``HF_HUB_OFFLINE``.
    cache_dir: the hub cache (None: huggingface_hub's default).

  Returns:
    The snapshot directory.

  Example:
    >>> import pathlib, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> resolve(tmp.name) == pathlib.Path(tmp.name)   # a directory is used as it is
    True
    >>> tmp.cleanup()

    A repo id (``resolve("Qwen/Qwen2.5-0.5B")``) returns its snapshot in the
    hub cache, downloading it unless ``local_files_only``.
  """
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f"`path` must be a directory or a Hub repo id, got {type(path).__name__}.")
  local = Path(path)
  if local.exists():
    if revision is not None:
      raise ValueError(f"`revision` applies to Hub repo ids; {str(local)!r} is a local path.")
    return local
  name = os.fspath(path)
  if isinstance(path, Path) or not _REPO_ID.match(name) or name.count("/") > 1:
    raise FileNotFoundError(f"`path` {name!r} is neither an existing directory nor a Hub repo id "
                            "('org/name').")
  try:
    import huggingface_hub
  except ImportError:
    raise ImportError(f"`path` {name!r} is not a local directory, so it is read as a Hub repo id, which "
                      "needs huggingface_hub (pip install huggingface_hub); or pass a directory.") from None
  only_local = offline() if local_files_only is None else bool(local_files_only)
  try:
    snapshot = huggingface_hub.snapshot_download(
        repo_id=name, revision=revision, cache_dir=None if cache_dir is None else str(cache_dir), local_files_only=only_local,
        allow_patterns=list(PATTERNS))
  except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, HTTP errors
    where = "the local Hub cache" + (" (offline)" if only_local else " or the Hub")
    raise FileNotFoundError(f"`path` {name!r}: no snapshot{f' of revision {revision!r}' if revision else ''} "
                            f"in {where}: {type(e).__name__}: {e}") from e
  return Path(snapshot)
