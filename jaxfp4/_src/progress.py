"""Progress bars for long loops: off unless asked for, and never a hard dependency.

Library functions take ``progress: bool = False`` so a call inside a user's
training loop writes nothing to stderr; the CLI turns bars on. tqdm is
optional (the ``[flax]`` extra installs it): without it a requested bar is
dropped and the loop runs as is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("jaxfp4")


class _NoBar:
  """The part of tqdm's interface the callers use, doing nothing."""

  def __init__(self, iterable: Iterable[Any] | None):
    self._iterable = iterable

  def __iter__(self):
    return iter(self._iterable if self._iterable is not None else ())

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def update(self, n: int = 1) -> None:
    del n

  def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
    del s, refresh

  def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
    del desc, refresh

  def close(self) -> None:
    pass


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool, desc: str | None = None,
        unit: str = "it", total: int | None = None) -> Any:
  """A tqdm bar over ``iterable`` if ``enabled`` and tqdm is installed, else a no-op
  wrapper with the same ``__iter__``/``update``/``close``.

  Example:
    >>> from jaxfp4._src.progress import bar
    >>> list(bar(range(3), enabled=False))
    [0, 1, 2]
  """
  if enabled:
    try:
      from tqdm.auto import tqdm
    except ImportError:
      logger.info("no progress bar: tqdm is not installed (pip install \"jaxfp4[flax]\")")
    else:
      return tqdm(iterable, desc=desc, unit=unit, total=total)
  return _NoBar(iterable)
