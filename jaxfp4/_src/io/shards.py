"""Writing a Hugging Face model directory: sharded safetensors, index, config, model card.

The layout is transformers' ``save_pretrained``: one ``model.safetensors``, or
``model-00001-of-0000N.safetensors`` shards of at most ``max_shard_size``
bytes each (a tensor larger than that gets a shard of its own) with
``model.safetensors.index.json`` = ``{"metadata": {"total_size": bytes},
"weight_map": {tensor: file}}``. Sizes as strings use transformers'
``convert_file_size_to_int`` units (``"5GB"`` = 5 * 10**9, ``"5GiB"`` = 5 * 2**30).

Everything is written into a temporary sibling directory and renamed into
place at the end, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from jaxfp4._src.io.checkpoint import INDEX, SINGLE
from jaxfp4._src.io.files import directory_atomic, refuse_nonempty_dir
from jaxfp4._src.io.safetensors import write_safetensors

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(max_shard_size: int | str | None) -> int | None:
  """Bytes of ``max_shard_size`` (an int, or a string such as ``"2GB"`` / ``"500MiB"``); None: no limit.

  Example:
    >>> parse_size("5MB"), parse_size("1KiB"), parse_size(100)
    (5000000, 1024, 100)
  """
  if max_shard_size is None:
    return None
  if isinstance(max_shard_size, int) and not isinstance(max_shard_size, bool) and max_shard_size > 0:
    return max_shard_size
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(max_shard_size).upper()) \
      if isinstance(max_shard_size, str) else None
  if m is None or float(m.group(1)) <= 0:
    raise ValueError(f"`max_shard_size` must be a positive int of bytes or a size such as '2GB' or "
                     f"'500MiB', got {max_shard_size!r}.")
  return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _shards(tensors: Iterable[tuple[str, np.ndarray]], limit: int | None):
  """Groups ``(name, array)`` into lists of at most ``limit`` bytes, in order."""
  shard: list[tuple[str, np.ndarray]] = []
  size = 0
  for name, array in tensors:
    array = np.asarray(array)
    if shard and limit is not None and size + array.nbytes > limit:
      yield shard
      shard, size = [], 0
    shard.append((name, array))
    size += array.nbytes
  if shard:
    yield shard


def write_pretrained(
    out_dir: str | os.PathLike,
    tensors: Iterable[tuple[str, np.ndarray]],
    *,
    config: Mapping[str, Any],
    max_shard_size: int | str | None = None,
    model_card: str | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
  """Writes a Hugging Face model directory, all at once or not at all.

  Args:
    out_dir: a new directory, or an existing empty one.
    tensors: ``(name, array)`` pairs; one shard is held in memory at a time.
    config: the ``config.json`` dict.
    max_shard_size: bytes per shard (int or ``"2GB"``-style string); None
      writes one ``model.safetensors``.
    model_card: text of ``README.md`` (None: none written).
    metadata: safetensors ``__metadata__`` of every file.
    overwrite: replace an existing directory that holds a ``config.json``
      (the old one stays whole until the new one is complete).

  Returns:
    ``out_dir``.

  Example:
    >>> import tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> out = write_pretrained(tmp.name + "/out", [("a", np.zeros(200)), ("b", np.zeros(200))],
    ...                        config={}, max_shard_size="2KB")
    >>> sorted(f.name for f in out.iterdir())
    ['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
    >>> tmp.cleanup()
  """
  out_dir = Path(out_dir)
  limit = parse_size(max_shard_size)
  refuse_nonempty_dir(out_dir, overwrite=overwrite, marker="config.json")
  with directory_atomic(out_dir, overwrite=overwrite) as tmp:
    names: list[list[str]] = []
    total = 0
    for i, shard in enumerate(_shards(tensors, limit)):
      write_safetensors(tmp / f"shard-{i}", shard, metadata=metadata)
      names.append([n for n, _ in shard])
      total += sum(a.nbytes for _, a in shard)
    if len(names) <= 1:
      if names:
        (tmp / "shard-0").rename(tmp / SINGLE)
      else:
        write_safetensors(tmp / SINGLE, [], metadata=metadata)
    else:
      weight_map = {}
      for i, keys in enumerate(names):
        fname = f"model-{i + 1:05d}-of-{len(names):05d}.safetensors"
        (tmp / f"shard-{i}").rename(tmp / fname)
        weight_map.update({k: fname for k in keys})
      index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
      (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    if model_card is not None:
      (tmp / "README.md").write_text(model_card)
  return out_dir


def model_card(*, name: str, architecture: str, quantization: Mapping[str, Any] | None,
               base_model: str | None = None) -> str:
  """A minimal ``README.md``: front matter for the Hub, what the weights are, how to load them.

  Example:
    >>> "nf4" in model_card(name="m", architecture="LlamaForCausalLM",
    ...                     quantization={"bnb_4bit_quant_type": "nf4"})
    True
  """
  from jaxfp4._src.version import __version__
  tags = ["jaxfp4", "safetensors"] + (["bitsandbytes", "4-bit"] if quantization else [])
  front = ["---", "library_name: transformers", "tags:"] + [f"- {t}" for t in tags]
  if base_model:
    front.append(f"base_model: {base_model}")
  front.append("---")
  if quantization:
    qt = quantization.get("bnb_4bit_quant_type")
    dq = " with double quantization of the scales" if quantization.get("bnb_4bit_use_double_quant") else ""
    kept = quantization.get("llm_int8_skip_modules") or []
    what = (f"The linear layers are stored in bitsandbytes 4-bit **{qt}**{dq} (blocksize 64, compute "
            f"dtype {quantization.get('bnb_4bit_compute_dtype')})"
            + (f"; kept in high precision: {', '.join(kept)}." if kept else "."))
    load = ("Load it with transformers + bitsandbytes (`AutoModelForCausalLM.from_pretrained(path)`) "
            "or with `jaxfp4.models.decoder.from_pretrained(path)`.")
  else:
    what = "The weights are stored unquantized."
    load = "Load it with `transformers.AutoModelForCausalLM.from_pretrained(path)` or jaxfp4."
  body = [f"# {name}", "", f"A `{architecture}` saved by jaxfp4 {__version__}. {what}", "", load, ""]
  return "\n".join(front + [""] + body)
