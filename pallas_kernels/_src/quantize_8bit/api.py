"""``quantize_8bit_blocks``: dispatch between the Triton kernel and the reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._src import common
from pallas_kernels._src.quantize_8bit.reference import quantize_8bit_blocks_reference
from pallas_kernels._src.quantize_8bit.triton import quantize_8bit_blocks_triton


def quantize_8bit_blocks(blocks: jax.Array, *, table, search,
                         implementation: str | None = None,
                         interpret: bool | None = None):
  """8-bit blockwise quantization of ``blocks[nb, bs]`` (see the reference).

  Args:
    blocks: float32 ``[nb, bs]``, ``bs`` a power of two.
    table: the sorted 256 code values.
    search: ``search(s, table) -> int32`` (bitsandbytes' binary search).
    implementation: None (the kernel on a GPU, else the reference), ``"xla"``
      or ``"pallas"`` (interpret mode off the GPU).
    interpret: run the kernel in the Pallas interpreter (default: off the GPU).

  Returns:
    ``(codes uint8 [nb, bs], absmax float32 [nb])``.
  """
  nb, bs = blocks.shape
  implementation = common.choose_implementation(
      implementation, nb > 0 and bs & (bs - 1) == 0 and blocks.dtype == jnp.float32,
      f"The 8-bit kernel needs float32 blocks of a power-of-two size, "
      f"got {blocks.shape} {blocks.dtype}.")
  if implementation == "xla":
    return quantize_8bit_blocks_reference(blocks, table=jnp.asarray(table, jnp.float32),
                                          search=search)
  if interpret is None:
    interpret = not common.on_gpu()
  return quantize_8bit_blocks_triton(blocks, table=table, search=search, interpret=interpret)
