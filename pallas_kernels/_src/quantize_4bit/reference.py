"""Pure-jnp reference of the block quantizer: the contract the kernel meets.

``blocks[nb, bs]`` (float32, bfloat16 or float16) -> ``(packed[nb, bs/2] uint8,
stored[nb])``: per row, ``amax``, ``(stored, mult) = codec.scale(amax, ...)``,
nibble ``= codec.encode(x, mult)``, two nibbles per byte with the first element
in the high nibble.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def quantize_blocks_reference(blocks: jax.Array, *, codec, scalars=(),
                              reciprocal=None) -> tuple[jax.Array, jax.Array]:
  """Quantizes each row of ``blocks`` as one block.

  Args:
    blocks: ``[nb, bs]`` float array, ``bs`` even.
    codec: the format's block codec (``prepare``, ``amax``, ``scale``, ``encode``).
    scalars: extra float32 scalars the codec's scale rule takes (nvfp4).
    reciprocal: how ``1/x`` is computed (default ``1.0 / x``).

  Returns:
    ``(packed uint8 [nb, bs // 2], stored [nb])``.
  """
  recip = reciprocal or (lambda v: 1.0 / v)
  x = codec.prepare(blocks)
  amax = codec.amax([x])
  stored, mult = codec.scale(amax, recip, *scalars)
  nib = codec.encode(x, mult[:, None]).astype(jnp.uint8)
  pairs = nib.reshape(nib.shape[0], -1, 2)
  return (pairs[..., 0] << 4) | pairs[..., 1], stored
