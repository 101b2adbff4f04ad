"""Block scales inside the register-table kernels: one float32 per row and chunk.

The kernels walk a row of ``W[N, K]`` in chunks of ``C = min(blocksize, 64) / 2``
bytes, so a chunk never straddles a quantization block and ``R = blocksize /
(2C)`` consecutive chunks share one scale. The chunk's partial sum is multiplied
by its block's scale once (post-scaling) instead of scaling every weight.

Scales are read by address (one float32 or byte per row and chunk from L1),
which covers every blocksize with one code path; the nested (double-quantized)
and byte-coded scales decode as ``combine_scales`` does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels._src.matmul_4bit.weight import WeightFormat, combine_scales


def chunk_bytes(blocksize: int) -> int:
  """Bytes per chunk: a whole block up to 64 elements, else 64 elements."""
  return min(blocksize, 64) // 2


def chunks_per_block(blocksize: int) -> int:
  return blocksize // (2 * chunk_bytes(blocksize))


class ScaleRefs:
  """The scale operands of a kernel (flat ``scales`` and, by kind, tables)."""

  def __init__(self, refs, fmt: WeightFormat):
    self.fmt = fmt
    refs = list(refs)
    self.scales = refs.pop(0)
    self.table: Any = refs.pop(0) if fmt.scale_kind == "byte" else None
    self.group: Any = None  # Pallas refs (nested formats only)
    self.offset: Any = None
    if fmt.nested_blocksize:
      self.group, self.offset = refs.pop(0), refs.pop(0)
    self.count = 1 + (self.table is not None) + 2 * (self.group is not None)

  @staticmethod
  def operand_count(fmt: WeightFormat) -> int:
    """How many operands :func:`scale_operands` gives for ``fmt``."""
    return 1 + (fmt.scale_kind == "byte") + 2 * bool(fmt.nested_blocksize)

  def chunk_scales(self, rows: jax.Array, chunks: jax.Array, nkb: int, mul_rn) -> jax.Array:
    """float32 scale of each (row, chunk) pair; ``rows`` and ``chunks`` broadcast.

    ``rows`` must already be clamped into ``[0, N)``.
    """
    fmt = self.fmt
    block = rows * nkb + chunks // chunks_per_block(fmt.blocksize)
    raw = self.scales[block]
    if fmt.scale_kind == "float":
      return combine_scales(raw, None, None, fmt)
    base = self.table[raw.astype(jnp.int32)]
    group = offset = None
    if fmt.nested_blocksize:
      gidx = jnp.minimum(block // fmt.nested_blocksize, self.group.shape[0] - 1)
      group = self.group[gidx]
      offset = self.offset[jnp.zeros(block.shape, jnp.int32)]
    return combine_scales(base, group, offset, fmt, mul_rn=mul_rn)


def scale_operands(w, fmt: WeightFormat) -> list[jax.Array]:
  """The flat scale arrays the kernels take, in :class:`ScaleRefs` order."""
  out = [w.scales.reshape(-1)]
  if fmt.scale_kind == "byte":
    out.append(w.scale_table)
  if fmt.nested_blocksize:
    out += [w.group_scales, w.offset]
  return out
