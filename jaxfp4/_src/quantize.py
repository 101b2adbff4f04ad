"""``quantize_4bit`` / ``dequantize_4bit`` and the named shortcuts.

The pipeline (bnb_format.md TL;DR): flatten row-major, split into blocks of
``blocksize`` (the tail block uses its valid elements only), take each block's
float32 max |x|, scale by the format's multiplier, map each value to a nibble,
pack two nibbles per byte (first element high). Block-aligned work is done by
``pallas_kernels.quantize_blocks`` / ``dequantize_blocks``, which pick a Pallas
kernel or their pure-jnp reference.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import codec
from jaxfp4._src import double_quant
from jaxfp4._src import formats
from jaxfp4._src import packing
from jaxfp4._src import rounding as rounding_lib
from jaxfp4._src.state import NestedState, QuantState
import pallas_kernels
from pallas_kernels._src.matmul_4bit import layout as k_order

logger = logging.getLogger("jaxfp4")

IMPLEMENTATIONS = (None, "xla", "pallas")


def _check_input(x: Any) -> jax.Array:
  if isinstance(x, (np.ndarray, jax.Array)) or hasattr(x, "__jax_array__"):
    dt = jnp.dtype(x.dtype)
  else:
    x = jnp.asarray(x)
    dt = x.dtype
  if dt.name not in formats.INPUT_DTYPES:
    raise ValueError(f"`x` must have a dtype in {formats.INPUT_DTYPES}, got {dt.name} "
                     "(integer, complex and float64 inputs are not quantized).")
  return jnp.asarray(x)


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
  if value not in allowed:
    raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")


def _nonfinite_message(count) -> str:
  return f"`x` has {int(count)} NaN/Inf values and nonfinite='raise'."


def _raise_if_nonfinite(count) -> None:
  if int(count):
    raise ValueError(_nonfinite_message(count))


def _raise_if_nonfinite_traced(count) -> None:
  if int(count):
    # JAX wraps a callback's exception in "JaxRuntimeError: INTERNAL: CpuCallback
    # error" with the message at the end of a long traceback: say it first.
    logger.error("jaxfp4.quantize_4bit (under jit): %s", _nonfinite_message(count))
    raise ValueError(_nonfinite_message(count))


def _check_finite(x: jax.Array) -> None:
  count = jnp.sum(~jnp.isfinite(x))
  if isinstance(count, jax.core.Tracer):
    jax.debug.callback(_raise_if_nonfinite_traced, count)  # surfaces at run time
  else:
    _raise_if_nonfinite(count)


def quantize_4bit(
    x: jax.typing.ArrayLike,
    *,
    blocksize: int | None = None,
    quant_type: str = "fp4",
    compress_statistics: bool = False,
    quant_storage: jax.typing.DTypeLike = jnp.uint8,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    nonfinite: str = "propagate",
    implementation: str | None = None,
) -> tuple[jax.Array, QuantState]:
  """Quantizes ``x`` blockwise to 4 bits, byte-compatible with bitsandbytes.

  Args:
    x: float32, bfloat16 or float16 array of any shape.
    blocksize: elements per block. None: 64 for nf4/fp4/e2m1, 32 for mxfp4,
      16 for nvfp4. nf4/fp4/e2m1 allow 32, 64, ..., 4096.
    quant_type: ``"fp4"``, ``"nf4"`` (bitsandbytes), ``"e2m1"``, ``"mxfp4"`` or
      ``"nvfp4"``.
    compress_statistics: double-quantize the absmax (nf4, fp4, e2m1).
    quant_storage: dtype the packed bytes are reinterpreted as.
    rounding: ``"nearest"`` (bitsandbytes' thresholds for nf4/fp4,
      round-to-nearest-even for the E2M1 formats) or ``"stochastic"``.
    key: PRNG key, required for ``rounding="stochastic"``.
    nonfinite: ``"propagate"`` (a block with NaN/Inf decodes to NaN; nested,
      its group of 256 blocks; a block max above 2**126 is kept),
      ``"bnb"`` (bitsandbytes' behaviour: NaN ignored in the max and encoded as
      nibble 0, Inf kept) or ``"raise"`` (ValueError; under ``jit`` an error at
      run time).
    implementation: None (choose), ``"xla"`` or ``"pallas"``.

  Returns:
    ``(packed, state)``: packed bytes of shape ``[(n + 1) // 2 // itemsize, 1]``
    and the :class:`QuantState`.

  Example:
    >>> import jax.numpy as jnp, jaxfp4
    >>> packed, state = jaxfp4.quantize_4bit(jnp.ones((4, 64)), quant_type="nf4")
    >>> packed.shape, packed.dtype, state.absmax.shape
    ((128, 1), dtype('uint8'), (4,))
  """
  fmt = formats.get_format(quant_type)
  bs = formats.resolve_blocksize(fmt, blocksize)
  _check_choice("rounding", rounding, rounding_lib.ROUNDINGS)
  _check_choice("nonfinite", nonfinite, codec.NONFINITE_POLICIES)
  _check_choice("implementation", implementation, IMPLEMENTATIONS)
  _check_choice("compress_statistics", compress_statistics, (True, False))
  if compress_statistics and not fmt.supports_double_quant:
    raise ValueError(f"`compress_statistics=True` is not available for quant_type="
                     f"{fmt.name!r}: its block scales are already 8-bit.")
  if rounding == "stochastic" and key is None:
    raise ValueError("`rounding='stochastic'` needs a PRNG `key`.")
  if rounding == "stochastic":
    rounding_lib.check_key(key)
  else:
    key = None  # unused: never traced, so whatever was passed cannot fail inside jit
  storage = packing.storage_dtype(quant_storage)
  x = _check_input(x)
  if nonfinite == "raise":
    _check_finite(x)

  packed, absmax, offset, absmax2, global_scale = _quantize_arrays(
      x, key, quant_type=fmt.name, blocksize=bs, rounding=rounding, nonfinite=nonfinite,
      implementation=implementation, compress_statistics=compress_statistics)
  state2 = None if absmax2 is None else NestedState(absmax=absmax2)
  state = QuantState.unchecked(  # the quantizer's own scales: no host copy to check them
      absmax=absmax, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype), blocksize=bs,
      quant_type=fmt.name, code=fmt.code, offset=offset, state2=state2,
      global_scale=global_scale)
  return packing.to_storage(packed, storage), state


# One compiled program per (shape, dtype, options): called eagerly, the quantizer
# would otherwise dispatch (and compile) each of its dozens of ops separately.
@functools.partial(jax.jit, static_argnames=(
    "quant_type", "blocksize", "rounding", "nonfinite", "implementation", "compress_statistics"))
def _quantize_arrays(x, key, *, quant_type, blocksize, rounding, nonfinite, implementation,
                     compress_statistics):
  """The array part of :func:`quantize_4bit`: packed bytes and the state's arrays."""
  fmt = formats.get_format(quant_type)
  bs = blocksize
  n = math.prod(x.shape)
  nb = -(-n // bs)
  flat = x.reshape(-1)
  blocks = jnp.pad(flat, (0, nb * bs - n)).reshape(nb, bs) if n % bs else flat.reshape(nb, bs)
  c = codec.codec_for(fmt.name, nonfinite)
  scalars: tuple[jax.Array, ...] = ()
  global_scale = None
  if fmt.scale_kind == "e4m3":
    f32 = c.prepare(flat)
    amax_all = jnp.max(jnp.where(jnp.isfinite(f32), jnp.abs(f32), 0.0)) if n else jnp.float32(0)
    amax_all = codec.flush_subnormals(amax_all)
    scalars = codec.nvfp4_global_scales(amax_all)
    global_scale = scalars[1]

  if n == 0:  # nothing to scan; keep the output dtypes of the general path
    stored_dtype = jnp.uint8 if fmt.scale_kind != "absmax" else jnp.float32
    packed, stored = jnp.zeros((0,), jnp.uint8), jnp.zeros((0,), stored_dtype)
  elif rounding == "stochastic":
    xb = c.prepare(blocks)
    stored, mult = c.scale(c.amax([xb]), codec.default_reciprocal, *scalars)
    nibbles = rounding_lib.stochastic_encode(c.scaled(xb, mult[:, None]), fmt, key)
    packed = packing.pack_nibbles(nibbles.reshape(-1)[: n + (n % 2)])
  else:
    packed, stored = pallas_kernels.quantize_blocks(
        blocks, codec=c, scalars=scalars, implementation=implementation)
    packed = packed.reshape(-1)[: (n + 1) // 2]

  if fmt.scale_kind == "e8m0":
    absmax = jax.lax.bitcast_convert_type(stored, jnp.float8_e8m0fnu)
  elif fmt.scale_kind == "e4m3":
    absmax = jax.lax.bitcast_convert_type(stored, jnp.float8_e4m3fn)
  else:
    absmax = stored
  offset = absmax2 = None
  if compress_statistics:
    absmax, offset, absmax2 = double_quant.compress_absmax(absmax, nonfinite=nonfinite)
  return packed, absmax, offset, absmax2, global_scale


def decode_scale_bytes(raw: jax.Array, state: QuantState) -> jax.Array:
  """float32 block multipliers of E8M0 (mxfp4) or E4M3 (nvfp4) scale bytes."""
  fmt = state.format
  if fmt.scale_kind == "e8m0":
    e = jax.lax.bitcast_convert_type(raw, jnp.uint8).astype(jnp.int32) - 127
    # Byte 0 means 2**-127, a float32 subnormal: flushed to zero like every
    # subnormal here. Byte 255 is the E8M0 NaN.
    scale = jnp.where(e == -127, 0.0, codec.pow2(jnp.clip(e, -126, 127)))
    return jnp.where(e == 128, pallas_kernels.canonical_nan(scale.shape), scale)
  assert state.global_scale is not None  # QuantState.validate: every nvfp4 state has one
  return codec.flush_subnormals(raw.astype(jnp.float32) * state.global_scale)


def block_scales(state: QuantState) -> jax.Array:
  """Float32 per-block multiplier that a decoded table value is scaled by."""
  fmt = state.format
  if fmt.scale_kind in ("e8m0", "e4m3"):
    return decode_scale_bytes(state.absmax.reshape(-1), state)
  absmax = state.absmax.reshape(-1)  # flat, also for a row-view state
  if state.state2 is not None:
    absmax = double_quant.decompress_absmax(
        absmax, state.offset, state.state2.absmax,
        code=np.asarray(state.state2.code, np.float32), blocksize=state.state2.blocksize)
  if fmt.name == "e2m1":
    absmax = absmax * jnp.float32(1.0 / formats.E2M1_MAX)
  return absmax


def check_packed(packed: jax.typing.ArrayLike, state: QuantState) -> jax.Array:
  """Validates ``state`` and that ``packed`` holds its bytes; returns them as uint8."""
  if not isinstance(state, QuantState):
    raise ValueError(f"`state` must be a QuantState, got {type(state).__name__}.")
  state.validate()
  packed = jnp.asarray(packed)
  packing.storage_dtype(packed.dtype)
  n = state.numel
  want = (n + 1) // 2
  have = math.prod(packed.shape) * packed.dtype.itemsize
  if have != want:
    raise ValueError(f"`packed` holds {have} bytes but the state describes {n} elements "
                     f"({want} bytes); the state does not belong to this array.")
  return packing.from_storage(packed)


def dequantize_4bit(
    packed: jax.typing.ArrayLike,
    state: QuantState,
    *,
    implementation: str | None = None,
) -> jax.Array:
  """Decodes packed 4-bit data back to ``state.dtype`` and ``state.shape``.

  Bitwise equal to bitsandbytes' CUDA ``dequantize_4bit`` for nf4/fp4
  (``float32(table[nibble] * absmax)`` rounded to the output dtype), in the real K
  order whatever ``state.layout`` the bytes hold.

  Args:
    packed: bytes from :func:`quantize_4bit` (any ``quant_storage``).
    state: the matching :class:`QuantState`.
    implementation: None (choose), ``"xla"`` or ``"pallas"``.

  Returns:
    Array of ``state.shape`` and ``state.dtype``.

  Example:
    >>> import jax.numpy as jnp, jaxfp4
    >>> x = jnp.linspace(-1, 1, 128, dtype=jnp.bfloat16).reshape(2, 64)
    >>> y = jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(x, quant_type="nf4"))
    >>> y.shape, y.dtype
    ((2, 64), dtype(bfloat16))
  """
  _check_choice("implementation", implementation, IMPLEMENTATIONS)
  data = check_packed(packed, state)
  n, bs = state.numel, state.blocksize
  if n == 0:
    return jnp.zeros(state.shape, state.dtype)
  scales = block_scales(state)
  lut = tuple(state.format.decode_lut)
  w = pallas_kernels.dequantize_blocks(
      data, scales, lut=lut, numel=n, blocksize=bs, out_dtype=jnp.dtype(state.dtype),
      implementation=implementation).reshape(state.shape)
  # decoded in the bytes' K order; a "wgmma" weight's columns go back to the real order
  return k_order.to_real_order(w, state.layout)


def _named(quant_type: str, doc_name: str):
  def quantize(x, *, blocksize: int | None = None, compress_statistics: bool = False,
               quant_storage=jnp.uint8, **kwargs):
    return quantize_4bit(x, blocksize=blocksize, quant_type=quant_type,
                         compress_statistics=compress_statistics,
                         quant_storage=quant_storage, **kwargs)

  def dequantize(packed, state: QuantState, **kwargs):
    if state.quant_type != quant_type:
      raise ValueError(f"`state.quant_type` is {state.quant_type!r}; "
                       f"dequantize_{quant_type} expects {quant_type!r}.")
    return dequantize_4bit(packed, state, **kwargs)

  quantize.__name__ = quantize.__qualname__ = f"quantize_{quant_type}"
  dequantize.__name__ = dequantize.__qualname__ = f"dequantize_{quant_type}"
  quantize.__doc__ = (f"``quantize_4bit(x, quant_type={quant_type!r}, ...)``: {doc_name}.\n\n"
                      "Takes the keyword options of :func:`quantize_4bit` and returns "
                      "``(packed, state)``.")
  dequantize.__doc__ = (f"``dequantize_4bit`` for a {quant_type} state (checks the "
                        "state's quant_type).")
  return quantize, dequantize


quantize_fp4, dequantize_fp4 = _named("fp4", "bitsandbytes FP4")
quantize_nf4, dequantize_nf4 = _named("nf4", "bitsandbytes NF4")
