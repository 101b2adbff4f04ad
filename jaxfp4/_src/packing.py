"""Nibble packing and the ``quant_storage`` reinterpretation of packed bytes.

bitsandbytes layout (csrc/kernels.cu, bnb_format.md §3): byte ``j`` holds
element ``2j`` in the high nibble and ``2j + 1`` in the low nibble; an odd
element count gets one padding nibble; the bytes are stored as ``[nbytes, 1]``
or reinterpreted as ``[nbytes // itemsize, 1]`` of a wider ``quant_storage``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STORAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "float16", "bfloat16",
                  "uint32", "int32", "float32")


def storage_dtype(quant_storage) -> np.dtype:
  """Validates ``quant_storage`` and returns it as a dtype."""
  try:
    dt = jnp.dtype(quant_storage)
  except TypeError:
    dt = None
  if dt is None or dt.name not in STORAGE_DTYPES:
    raise ValueError(
        f"`quant_storage` must be one of {STORAGE_DTYPES}, got {quant_storage!r}.")
  return dt


def pack_nibbles(nibbles: jax.Array) -> jax.Array:
  """Packs an even-length int vector of nibbles into bytes (first one high)."""
  pairs = nibbles.astype(jnp.uint8).reshape(-1, 2)
  return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_nibbles(packed: jax.Array) -> jax.Array:
  """Inverse of :func:`pack_nibbles`: uint8 ``[m]`` -> int32 ``[2m]``."""
  b = packed.astype(jnp.int32)
  return jnp.stack([b >> 4, b & 0xF], axis=-1).reshape(-1)


def to_storage(packed: jax.Array, dtype: np.dtype) -> jax.Array:
  """uint8 ``[nbytes]`` -> ``[nbytes // itemsize, 1]`` of ``dtype`` (same bytes)."""
  nbytes = packed.shape[0]
  k = dtype.itemsize
  if nbytes % k:
    raise ValueError(
        f"`quant_storage`={dtype.name} needs the packed byte count to be a "
        f"multiple of {k}, got {nbytes} bytes; use quant_storage=jnp.uint8.")
  if k == 1:
    return jax.lax.bitcast_convert_type(packed, dtype).reshape(nbytes, 1)
  words = jax.lax.bitcast_convert_type(packed.reshape(nbytes // k, k), dtype)
  return words.reshape(nbytes // k, 1)


def from_storage(packed: jax.Array) -> jax.Array:
  """Any storage array -> its bytes as a flat uint8 vector."""
  dt = storage_dtype(packed.dtype)
  flat = packed.reshape(-1)
  if dt.itemsize == 1:
    return jax.lax.bitcast_convert_type(flat, jnp.uint8)
  return jax.lax.bitcast_convert_type(flat, jnp.uint8).reshape(-1)


def packed_shape(numel: int, dtype: np.dtype) -> tuple[int, int]:
  """Shape of the packed array for ``numel`` elements stored as ``dtype``."""
  return ((numel + 1) // 2 // dtype.itemsize, 1)
