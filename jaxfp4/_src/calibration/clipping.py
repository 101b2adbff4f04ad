"""Clipped absmax scales: a smaller stored absmax that still decodes as bitsandbytes does.

Plain absmax quantization maps each block's largest |w| to the code's end
(+-1, or +-6 for E2M1). A heavy-tailed block then spends most of its 16 levels
on the range of one value. Storing ``alpha * absmax`` (0 < alpha <= 1) instead
clips the few values beyond it to the code's end and quantizes every other
value on a finer grid. The state is an ordinary one: ``dequantize`` is still
``code[nibble] * stored_absmax``, so bitsandbytes loads it unchanged.

``search_clip`` picks alpha per output row of ``W[out, in]`` to minimize the
layer's output error on calibration data, ``sum_j dw_j^T H dw_j`` with
``H = sum x^T x`` (GPTQ's layer-wise objective, Frantar et al. 2022,
arXiv 2210.17323; the grid search over clipping ratios follows AWQ, Lin et al.
2023, arXiv 2306.00978 §3.3). The objective is exactly separable over output
rows, so a per-row search finds the best alpha of each row independently.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import codec
from jaxfp4._src import double_quant
from jaxfp4._src import formats
from jaxfp4._src import packing
from jaxfp4._src.quantize import dequantize_4bit
from jaxfp4._src.state import NestedState, QuantState

CLIP_QUANT_TYPES = ("nf4", "fp4", "e2m1")  # the formats whose block scale is a float32 absmax
DEFAULT_GRID = tuple(float(a) for a in np.linspace(0.5, 1.0, 21))  # steps of 0.025; 1.0 = plain absmax


def quantize_4bit_clipped(
    x: jax.typing.ArrayLike,
    *,
    clip: jax.typing.ArrayLike,
    quant_type: str = "nf4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_storage: jax.typing.DTypeLike = jnp.uint8,
) -> tuple[jax.Array, QuantState]:
  """Like :func:`jaxfp4.quantize_4bit`, with each block's absmax multiplied by ``clip``.

  The stored absmax is ``clip * max|block|``; values beyond it are encoded as
  the code's end value. The result is a valid bitsandbytes state
  (``dequantize_4bit`` gives ``code[nibble] * stored_absmax``); ``clip=1`` gives
  exactly ``quantize_4bit``'s bytes for finite inputs.

  Args:
    x: float32, bfloat16 or float16 array.
    clip: a scalar or a float array ``[num_blocks]`` in (0, 1].
    quant_type: ``"nf4"``, ``"fp4"`` or ``"e2m1"`` (float absmax formats).
    blocksize: elements per block (None: 64).
    compress_statistics: double-quantize the stored absmax (bitsandbytes "nested").
    quant_storage: dtype the packed bytes are reinterpreted as.

  Returns:
    ``(packed, state)`` as :func:`jaxfp4.quantize_4bit` returns them.

  Example:
    >>> import jax, jaxfp4
    >>> w = jax.random.t(jax.random.key(0), 3.0, (64, 128))
    >>> packed, state = jaxfp4.quantize_4bit_clipped(w, clip=0.8, quant_type="nf4")
    >>> jaxfp4.dequantize_4bit(packed, state).shape
    (64, 128)
  """
  if quant_type not in CLIP_QUANT_TYPES:
    raise ValueError(f"`quant_type` must be one of {CLIP_QUANT_TYPES} for clipped scales, got {quant_type!r}.")
  fmt = formats.get_format(quant_type)
  bs = formats.resolve_blocksize(fmt, blocksize)
  if compress_statistics not in (True, False):
    raise ValueError(f"`compress_statistics` must be one of (True, False), got {compress_statistics!r}.")
  x = jnp.asarray(x)
  if x.dtype.name not in formats.INPUT_DTYPES:
    raise ValueError(f"`x` must have a dtype in {formats.INPUT_DTYPES}, got {x.dtype.name}.")
  n = math.prod(x.shape)
  nb = -(-n // bs)
  clip = jnp.asarray(clip, jnp.float32)
  if clip.ndim not in (0, 1) or (clip.ndim == 1 and clip.shape[0] != nb):
    raise ValueError(f"`clip` must be a scalar or an array [{nb}] (one per block), got shape {clip.shape}.")
  if not isinstance(clip, jax.core.Tracer) and not bool(jnp.all((clip > 0) & (clip <= 1))):
    raise ValueError("`clip` must be in (0, 1].")
  storage = packing.storage_dtype(quant_storage)
  packed, absmax, offset, absmax2 = _quantize_clipped(
      x, jnp.broadcast_to(clip, (nb,)), quant_type=fmt.name, blocksize=bs,
      compress_statistics=compress_statistics)
  state = QuantState(
      absmax=absmax, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype), blocksize=bs,
      quant_type=fmt.name, code=fmt.code, offset=offset,
      state2=None if absmax2 is None else NestedState(absmax=absmax2))
  return packing.to_storage(packed, storage), state


@functools.partial(jax.jit, static_argnames=("quant_type", "blocksize", "compress_statistics"))
def _quantize_clipped(x, clip, *, quant_type, blocksize, compress_statistics):
  blocks = _blocks(x, clip.shape[0], blocksize)
  c = codec.codec_for(quant_type)
  # The clipped absmax is rounded to float32 once and used both to encode and to
  # decode, so the nibbles are those of quantize_4bit for this absmax.
  return encode_with_absmax(x, c.amax([blocks]) * clip, quant_type=quant_type, blocksize=blocksize,
                            compress_statistics=compress_statistics)


def _blocks(x, nb, blocksize):
  n = math.prod(x.shape)
  flat = x.reshape(-1).astype(jnp.float32)
  return jnp.pad(flat, (0, nb * blocksize - n)).reshape(nb, blocksize)


def encode_with_absmax(x, absmax, *, quant_type, blocksize, compress_statistics):
  """Packed nibbles of ``x`` for a given float32 absmax per block (traceable).

  Returns ``(packed uint8, stored absmax or its codes, offset, nested absmax)``.
  Values beyond a block's absmax encode as the code's end value: bitsandbytes'
  encoders saturate.
  """
  n = math.prod(x.shape)
  blocks = _blocks(x, absmax.shape[0], blocksize)
  c = codec.codec_for(quant_type)
  stored, mult = c.scale(absmax.astype(jnp.float32), codec.default_reciprocal)
  nibbles = c.encode(blocks, mult[:, None])
  packed = packing.pack_nibbles(nibbles.reshape(-1)[: n + (n % 2)].astype(jnp.uint8))
  offset = absmax2 = None
  if compress_statistics:
    stored, offset, absmax2 = double_quant.compress_absmax(stored)
  return packed, stored, offset, absmax2


@jax.jit
def _state_row_errors(packed, state, w, h):
  return row_errors(dequantize_4bit(packed, state), w, h)


def row_errors(w_hat: jax.Array, w: jax.Array, h: jax.Array) -> jax.Array:
  """``dw_j^T H dw_j`` for each row j of ``W[out, in]`` (float32 ``[out]``)."""
  d = (w_hat.astype(jnp.float32) - w.astype(jnp.float32))
  return jnp.sum(d * jnp.matmul(d, h, precision=jax.lax.Precision.HIGHEST), axis=1)


def search_clip(
    w: jax.typing.ArrayLike,
    h: jax.typing.ArrayLike,
    *,
    quant_type: str = "nf4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
    grid: tuple[float, ...] = DEFAULT_GRID,
) -> np.ndarray:
  """The clipping ratio per output row of ``W[out, in]`` that minimizes its output error.

  Args:
    w: the weight ``[out, in]`` (bitsandbytes layout, so blocks run along rows).
    h: the input Gram matrix ``[in, in]`` (``sum x^T x`` over calibration rows).
    quant_type, blocksize, compress_statistics: the format searched.
    grid: candidate ratios in (0, 1]; 1.0 (plain absmax) must be one, so the
      result is never worse than absmax on the calibration data.

  Returns:
    float32 ``[out]``: without double quantization each row's output error is
    at most plain absmax's; with it, the layer's total is. When ``in`` is not a multiple of the block size, blocks
    straddle rows and the rows are no longer separable: one ratio for the
    whole layer (the same value in every row).
  """
  w = jnp.asarray(w)
  h = jnp.asarray(h, jnp.float32)
  out, k = w.shape
  if 1.0 not in grid or not all(0 < a <= 1 for a in grid):
    raise ValueError(f"`grid` must hold ratios in (0, 1] including 1.0, got {grid}.")
  bs = formats.resolve_blocksize(formats.get_format(quant_type), blocksize)
  per_row = k % bs == 0
  errors = []
  for a in grid:
    packed, state = quantize_4bit_clipped(w, clip=a, quant_type=quant_type, blocksize=bs,
                                          compress_statistics=compress_statistics)
    errors.append(_state_row_errors(packed, state, w, h))
  e = np.asarray(jnp.stack(errors), np.float64)  # [grid, out]
  g = np.asarray(grid, np.float32)
  if not per_row:
    return np.full((out,), g[np.argmin(e.sum(axis=1))], np.float32)
  clip = g[np.argmin(e, axis=0)]
  if compress_statistics:
    # Double quantization rounds each block's absmax against its neighbours
    # (a shared offset and a nested absmax per 256 blocks), so mixing ratios
    # row by row is not exactly separable: keep the mix only if the whole
    # layer's error is no worse than plain absmax's.
    packed, state = quantize_rows_clipped(w, clip, quant_type=quant_type, blocksize=bs, compress_statistics=True)
    if float(jnp.sum(_state_row_errors(packed, state, w, h))) > float(e[list(grid).index(1.0)].sum()):
      return np.ones((out,), np.float32)
  return clip


def row_clip_to_blocks(clip_rows: np.ndarray, shape: tuple[int, int], blocksize: int) -> np.ndarray:
  """Per-row ratios ``[out]`` as per-block ratios of the row-major ``W[out, in]``."""
  out, k = shape
  nb = -(-(out * k) // blocksize)
  first_row = (np.arange(nb) * blocksize) // k  # a block's first element decides (exact when k % bs == 0)
  return np.asarray(clip_rows, np.float32)[first_row]


def quantize_rows_clipped(w: jax.Array, clip_rows: Any, **kwargs: Any) -> tuple[jax.Array, QuantState]:
  """:func:`quantize_4bit_clipped` with one ratio per row of ``W[out, in]``."""
  bs = formats.resolve_blocksize(formats.get_format(kwargs.get("quant_type", "nf4")), kwargs.get("blocksize"))
  kwargs["blocksize"] = bs
  return quantize_4bit_clipped(w, clip=row_clip_to_blocks(np.asarray(clip_rows), (w.shape[0], w.shape[1]), bs), **kwargs)
