"""Timing of quantize/dequantize against the device's measured copy bandwidth.

Bytes are counted first: quantize reads the input once and writes 0.5 byte per
element plus the block scales; dequantize reads those and writes the output
once. The roofline is a device-to-device copy measured in the same run (an
elementwise ``x + 1`` over the same bytes), so "% of copy" is the fraction of
the bandwidth this device actually delivers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from jaxfp4._src import formats
from jaxfp4._src import quantize as q

logger = logging.getLogger("jaxfp4")


QUICK = dict(warmup=1, batches=3, per_batch=2)  # --quick: a smoke test, noisy numbers


def time_call(fn: Callable, *args, warmup: int = 5, batches: int = 25,
              per_batch: int = 20) -> float:
  """Median seconds per call: batches of async calls, one sync per batch."""
  out = None
  for _ in range(warmup):
    out = fn(*args)
  jax.block_until_ready(out)
  samples = []
  for _ in range(batches):
    t0 = time.perf_counter()
    for _ in range(per_batch):
      out = fn(*args)
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - t0) / per_batch)
  return statistics.median(samples)


@dataclasses.dataclass(frozen=True)
class Row:
  op: str
  quant_type: str
  variant: str
  seconds: float
  nbytes: int
  copy_bw: float

  @property
  def bandwidth(self) -> float:
    return self.nbytes / self.seconds

  def as_dict(self) -> dict:
    return {"op": self.op, "quant_type": self.quant_type, "variant": self.variant,
            "us": self.seconds * 1e6, "bytes": self.nbytes,
            "GBps": self.bandwidth / 1e9, "pct_copy": 100 * self.bandwidth / self.copy_bw}


def quant_bytes(n: int, itemsize: int, blocksize: int, scale_bytes: int) -> tuple[int, int]:
  """(quantize bytes, dequantize bytes) moved at minimum for n elements."""
  stored = n // 2 + (n // blocksize) * scale_bytes
  return n * itemsize + stored, stored + n * itemsize


def copy_bandwidths(x: jax.Array, *, quick: bool = False) -> dict[str, float]:
  """Bytes/s (read + write) of three passes that read and write ``x`` once.

  The roofline is the best of them: a plain device-to-device copy, an
  elementwise ``x + 1``, and the same on the data viewed as uint32 words.
  """
  words = jax.lax.bitcast_convert_type(x.reshape(-1, 2), jnp.uint32) \
      if x.dtype.itemsize == 2 else x.reshape(-1)
  fns = {
      "copy": (jax.jit(lambda a: a.copy()), x),
      "x + 1": (jax.jit(lambda a: a + jnp.asarray(1, a.dtype)), x),
      "words ^ 1": (jax.jit(lambda a: a ^ jnp.asarray(1, a.dtype)) if
                    jnp.issubdtype(words.dtype, jnp.integer) else
                    jax.jit(lambda a: a + jnp.asarray(1, a.dtype)), words),
  }
  reps = QUICK if quick else {}
  return {k: 2 * x.nbytes / time_call(f, a, **reps) for k, (f, a) in fns.items()}


def run(shape=(8192, 8192), dtype=jnp.bfloat16, quant_types=("nf4", "fp4"),
        nested=(False, True), implementations=("xla", "pallas"),
        configs: dict | None = None, sweep_quant_types=("nf4",),
        progress=None, quick: bool = False) -> tuple[float, list[Row]]:
  """Times quantize and dequantize for each format and implementation.

  Args:
    shape, dtype: the weight.
    quant_types, nested, implementations: what to time.
    configs: optional ``{"quantize": [QuantizeConfig], "dequantize": [...]}``
      extra kernel configs to time as separate rows.
    sweep_quant_types: the formats the extra configs are timed for.
    progress: optional callable(str) told about each step.
    quick: few repetitions (a smoke test; the numbers are noisy).

  Returns:
    (copy bandwidth in bytes/s, rows).
  """
  import pallas_kernels
  from jaxfp4._src import codec as codec_lib
  x = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype)
  copies = copy_bandwidths(x, quick=quick)
  copy_bw = max(copies.values())
  if progress:
    progress("copy: " + ", ".join(f"{k} {v / 1e9:.0f} GB/s" for k, v in copies.items()))
  rows = []
  n = x.size
  for qt in quant_types:
    fmt = formats.get_format(qt)
    bs = fmt.default_blocksize
    scale_bytes = 4 if fmt.scale_kind == "absmax" else 1
    for dq in nested:
      if dq and not fmt.supports_double_quant:
        continue
      nbytes_q, nbytes_d = quant_bytes(n, x.dtype.itemsize, bs, 1 if dq else scale_bytes)
      tag = qt + ("+dq" if dq else "")
      for impl in implementations:
        if progress:
          progress(f"{tag} {impl}")
        fq = jax.jit(functools.partial(q.quantize_4bit, quant_type=qt,
                                       compress_statistics=dq, implementation=impl))
        rows.append(_safe_row("quantize", tag, impl, fq, (x,), nbytes_q, copy_bw, quick))
        packed, state = jax.jit(functools.partial(q.quantize_4bit, quant_type=qt,
                                                  compress_statistics=dq,
                                                  implementation="xla"))(x)
        fd = jax.jit(functools.partial(q.dequantize_4bit, implementation=impl))
        rows.append(_safe_row("dequantize", tag, impl, fd, (packed, state), nbytes_d, copy_bw, quick))
      if dq or not configs or qt not in sweep_quant_types:
        continue
      c = codec_lib.codec_for(qt)
      blocks = x.reshape(-1, bs)
      scalars: tuple[jax.Array, ...] = ()
      if fmt.scale_kind == "e4m3":  # the per-tensor pass is timed in the "pallas" row
        scalars = codec_lib.nvfp4_global_scales(jnp.max(jnp.abs(x.astype(jnp.float32))))
      for cfg in configs.get("quantize", []):
        fk = jax.jit(functools.partial(pallas_kernels.quantize_blocks_triton, codec=c,
                                       scalars=scalars, config=cfg))
        rows.append(_safe_row("quantize", tag, _cfg_name(cfg), fk, (blocks,), nbytes_q, copy_bw))
      packed, state = q.quantize_4bit(x, quant_type=qt)
      data = packed.reshape(-1)
      scales = q.block_scales(state)
      for cfg in configs.get("dequantize", []):
        fk = jax.jit(functools.partial(
            pallas_kernels.dequantize_blocks_triton, lut=fmt.decode_lut, blocksize=bs,
            out_dtype=x.dtype, config=cfg))
        rows.append(_safe_row("dequantize", tag, _cfg_name(cfg), fk, (data, scales),
                              nbytes_d, copy_bw))
  return copy_bw, rows


def _safe_row(op, tag, variant, fn, args, nbytes, copy_bw, quick=False):
  try:
    return Row(op, tag, variant, time_call(fn, *args, **(QUICK if quick else {})), nbytes, copy_bw)
  except Exception as e:  # a config that fails to compile is reported, not fatal
    logger.warning("%s %s %s failed: %s", op, tag, variant, repr(e)[:500])
    return Row(op, tag, variant + " FAILED", float("inf"), nbytes, copy_bw)


def _cfg_name(cfg) -> str:
  parts = [f"r{cfg.block_rows}", f"w{cfg.num_warps}", f"s{cfg.num_stages}"]
  if hasattr(cfg, "lookup"):
    parts.append(cfg.lookup)
  return "pallas[" + ",".join(parts) + "]"


def format_table(copy_bw: float, rows: list[Row]) -> str:
  lines = [f"copy bandwidth (best of copy, x + 1, words ^ 1; read + write): {copy_bw / 1e9:.0f} GB/s",
           f"{'op':<11}{'format':<9}{'implementation':<32}{'us':>9}{'GB/s':>9}{'% copy':>9}"]
  for r in rows:
    d = r.as_dict()
    lines.append(f"{r.op:<11}{r.quant_type:<9}{r.variant:<32}{d['us']:>9.1f}"
                 f"{d['GBps']:>9.1f}{d['pct_copy']:>8.1f}%")
  return "\n".join(lines)
