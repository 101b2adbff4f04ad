"""Converting a Hugging Face safetensors checkpoint to bitsandbytes 4-bit.

The output is what ``transformers`` writes after loading the model with
``BitsAndBytesConfig(load_in_4bit=True, ...)`` and calling ``save_pretrained``
(bnb_format.md §5): every linear weight becomes a bitsandbytes tensor group,
embeddings, norms and skipped modules stay as they are, and ``config.json``
gains a ``quantization_config``. One tensor is in memory at a time, and the
input is never written to.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats
from jaxfp4._src.io import checkpoint
from jaxfp4._src.io.files import directory_atomic
from jaxfp4._src.io.safetensors import write_safetensors
from jaxfp4._src.progress import bar as progress_bar
from jaxfp4._src.quantize import quantize_4bit

# Modules transformers never turns into Linear4bit: embeddings are nn.Embedding.
EMBEDDING_NAMES = ("*embed*", "wte", "wpe", "shared")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclasses.dataclass(frozen=True)
class ConvertReport:
  """What :func:`quantize_checkpoint` wrote."""

  out_dir: Path
  quantized: tuple[str, ...]
  kept: tuple[str, ...]
  bytes_before: int
  bytes_after: int

  def __str__(self) -> str:
    return (f"{len(self.quantized)} weights quantized, {len(self.kept)} tensors kept; "
            f"{self.bytes_before:,} -> {self.bytes_after:,} bytes "
            f"({self.bytes_after / max(self.bytes_before, 1):.3f}x) in {self.out_dir}")


def is_linear_weight(name: str, shape: Sequence[int], skip: Sequence[str]) -> bool:
  """Whether ``jaxfp4 quantize`` turns tensor ``name`` into a 4-bit group."""
  if not name.endswith(".weight") or len(shape) != 2:
    return False
  module = name[: -len(".weight")]
  parts = module.split(".")
  for pattern in tuple(EMBEDDING_NAMES) + tuple(skip):
    if any(fnmatch.fnmatchcase(p, pattern) for p in parts) or fnmatch.fnmatchcase(module, pattern):
      return False
  return True


def _check_dirs(in_dir: Path, out_dir: Path) -> None:
  if not in_dir.is_dir():
    raise FileNotFoundError(f"`in_dir` {str(in_dir)!r} is not a directory.")
  if out_dir.resolve() == in_dir.resolve() or in_dir.resolve() in out_dir.resolve().parents:
    raise ValueError(f"`out_dir` must lie outside `in_dir` ({str(in_dir)!r}); the input is never written to.")
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise FileExistsError(f"`out_dir` {str(out_dir)!r} exists and is not empty; jaxfp4 never writes over files.")
  for up in out_dir.resolve().parents:
    if up.exists():
      if not up.is_dir():
        raise ValueError(f"`out_dir` {str(out_dir)!r} lies under {str(up)!r}, which is a file, not a directory.")
      break


def quantize_checkpoint(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quant_type: str = "nf4",
    blocksize: int = 64,
    compress_statistics: bool = False,
    skip: Sequence[str] = ("lm_head",),
    dtype: str = "auto",
    compute_dtype: str = "bfloat16",
    progress: bool = False,
) -> ConvertReport:
  """Writes a bitsandbytes 4-bit copy of a Hugging Face checkpoint directory.

  Args:
    in_dir: a directory with ``config.json`` and ``model.safetensors`` (or shards).
    out_dir: a new or empty directory.
    quant_type: ``"nf4"`` or ``"fp4"`` (what bitsandbytes reads).
    blocksize: elements per absmax block (bitsandbytes: 64).
    compress_statistics: double-quantize the absmax.
    skip: module names or globs kept in high precision (``lm_head`` as in transformers).
    dtype: cast float tensors first (``"auto"`` keeps each tensor's dtype), as
      ``from_pretrained(dtype=...)`` does before bitsandbytes quantizes.
    compute_dtype: recorded as ``bnb_4bit_compute_dtype``.
    progress: show a progress bar.

  Returns:
    A :class:`ConvertReport`.
  """
  in_dir, out_dir = Path(in_dir), Path(out_dir)
  if quant_type not in ("nf4", "fp4"):
    raise ValueError(f"`quant_type` must be 'nf4' or 'fp4' (the bitsandbytes formats), got {quant_type!r}.")
  formats.resolve_blocksize(formats.get_format(quant_type), blocksize)  # before any work starts
  if dtype not in DTYPES:
    raise ValueError(f"`dtype` must be one of {DTYPES}, got {dtype!r}.")
  if compute_dtype not in DTYPES[1:]:
    raise ValueError(f"`compute_dtype` must be one of {DTYPES[1:]}, got {compute_dtype!r}.")
  _check_dirs(in_dir, out_dir)
  config = checkpoint.read_config(in_dir)
  if config.get("quantization_config") is not None:
    raise ValueError(f"{in_dir}/config.json already has a quantization_config; convert the "
                     "unquantized checkpoint instead.")
  ckpt = checkpoint.Checkpoint(in_dir)
  skip = tuple(skip)
  targets = {n for n in ckpt.keys() if is_linear_weight(n, ckpt.info(n).shape, skip)}
  if not targets:
    ckpt.close()
    raise ValueError(f"No linear weight found to quantize in {str(in_dir)!r} (skip={list(skip)}).")
  # Everything is written into a temporary sibling that becomes out_dir only
  # when complete: a failure (a bad tensor in shard 2, a full disk) leaves
  # out_dir as it was, so the same command can simply be run again.
  try:
    with directory_atomic(out_dir) as tmp:
      report = _convert(ckpt, in_dir, tmp, config, targets, quant_type=quant_type, blocksize=blocksize,
                        compress_statistics=compress_statistics, skip=skip, dtype=dtype,
                        compute_dtype=compute_dtype, progress=progress)
  finally:
    ckpt.close()
  return dataclasses.replace(report, out_dir=out_dir)


def _convert(ckpt, in_dir, out_dir, config, targets, *, quant_type, blocksize, compress_statistics,
             skip, dtype, compute_dtype, progress) -> ConvertReport:
  """Writes the converted checkpoint into ``out_dir`` (a fresh temporary directory)."""
  quantized, kept = [], []
  bytes_before = bytes_after = 0
  total = len(ckpt.keys())
  bar = progress_bar(total=total, enabled=progress, desc="quantize", unit="tensor")
  weight_map = {}
  for f in ckpt.files:
    def tensors(f=f):
      nonlocal bytes_before, bytes_after
      for name in f.keys():
        info = f.info(name)
        bytes_before += info.nbytes
        a = f.get(name)
        if dtype != "auto" and checkpoint.is_float_dtype(a.dtype):
          a = a.astype(jnp.dtype(dtype))
        if name in targets:
          if not checkpoint.is_float_dtype(a.dtype) or a.dtype == np.float64:
            raise ValueError(f"Tensor {name!r} has dtype {a.dtype}; only float16/bfloat16/float32 "
                             "weights can be quantized.")
          packed, state = quantize_4bit(jnp.asarray(a), quant_type=quant_type, blocksize=blocksize,
                                        compress_statistics=compress_statistics)
          group = list(checkpoint.tensor_group_4bit(name, jax.device_get(packed), state))
          quantized.append(name)
        else:
          group = [(name, a)]
          kept.append(name)
        for k, v in group:
          bytes_after += v.nbytes
          weight_map[k] = f.path.name
          yield k, v
        bar.update(1)
    write_safetensors(out_dir / f.path.name, tensors(), metadata={"format": "pt"})
  bar.close()
  if (in_dir / checkpoint.INDEX).is_file():
    index = {"metadata": {"total_size": bytes_after}, "weight_map": dict(sorted(weight_map.items()))}
    _write_new(out_dir / checkpoint.INDEX, json.dumps(index, indent=2) + "\n")
  config = dict(config)
  if dtype != "auto":
    config["dtype"] = dtype
  config["quantization_config"] = checkpoint.bnb_quantization_config(
      quant_type=quant_type, compress_statistics=compress_statistics,
      compute_dtype=compute_dtype, quant_storage="uint8", skip_modules=list(skip))
  _write_new(out_dir / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
  for extra in sorted(in_dir.iterdir()):  # tokenizer, generation config, ...
    if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in (
        "config.json", checkpoint.INDEX) and not (out_dir / extra.name).exists():
      shutil.copy2(extra, out_dir / extra.name)
  return ConvertReport(out_dir, tuple(quantized), tuple(kept), bytes_before, bytes_after)


def _write_new(path: Path, text: str) -> None:
  with open(path, "x") as f:  # "x": never replace an existing file
    f.write(text)
