"""Shared pieces of the kernel configs: validation and measured winners as data."""

from __future__ import annotations

import json
import pathlib

_DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def check_powers_of_two(config, names: tuple[str, ...]) -> None:
  """Raises a ValueError naming the first field of ``config`` that is not 2**k."""
  for name in names:
    v = getattr(config, name)
    if v < 1 or v & (v - 1):
      raise ValueError(f"`{name}` must be a power of two, got {v}.")


def tuned_entry(kernel: str, device_kind: str | None, key: str) -> dict | None:
  """The measured config of ``kernel`` for ``key`` on ``device_kind``, if recorded.

  Winners of ``jaxfp4 bench --sweep`` live in ``pallas_kernels/data/<kernel>.json``
  as ``{device_kind: {"<dtype>/<blocksize>": {field: value}}}``.
  """
  if not device_kind:
    return None
  try:
    table = json.loads((_DATA / f"{kernel}.json").read_text())
  except FileNotFoundError:
    return None
  return table.get(device_kind, {}).get(key)
