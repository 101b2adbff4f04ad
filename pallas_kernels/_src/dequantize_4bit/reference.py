"""Pure-jnp reference of the block dequantizer: the contract the kernel meets.

``y[i] = out_dtype(ftz(float32(lut[nibble[i]] * scales[i // blocksize])))``: one
float32 multiply and one round-to-nearest-even conversion, as bitsandbytes'
``kDequantizeBlockwise`` (bnb_format.md §4.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._src import common


def dequantize_blocks_reference(data: jax.Array, scales: jax.Array, *, lut, numel: int,
                                blocksize: int, out_dtype) -> jax.Array:
  """Decodes ``numel`` packed nibbles.

  Args:
    data: uint8 ``[(numel + 1) // 2]`` packed bytes (first element high).
    scales: float32 ``[ceil(numel / blocksize)]`` block multipliers.
    lut: the 16 decode values.
    numel: number of elements.
    blocksize: elements per block.
    out_dtype: output dtype.

  Returns:
    ``[numel]`` array of ``out_dtype``.
  """
  b = data.astype(jnp.int32)
  nib = jnp.stack([b >> 4, b & 0xF], axis=-1).reshape(-1)[:numel]
  nb = scales.shape[0]
  if numel % blocksize:
    nib = jnp.pad(nib, (0, nb * blocksize - numel))
  values = jnp.asarray(lut, jnp.float32)[nib].reshape(nb, blocksize)
  y = common.flush_subnormals(values * scales[:, None])
  return y.astype(out_dtype).reshape(-1)[:numel]
