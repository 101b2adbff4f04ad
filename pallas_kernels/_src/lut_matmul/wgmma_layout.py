"""The Mosaic GPU kernel's K order: where the decoder puts each weight of a 64-weight block.

``wgmma.py`` loads a row's packed bytes as int32 words in Mosaic's WGMMA register layout and
decodes each word's 8 codes into the same thread's operand registers in word order. The
operand's logical K order then differs from the weight's: real index ``k`` sits at
``PERMUTATION[k]`` (bitsandbytes stores element ``2i`` in the high nibble of byte ``i``;
words are little-endian; WGMMA gives each thread column pairs ``8g + 2 (lane % 4) + {0, 1}``).
The activations are permuted the same way, which leaves the product unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 64  # weights per scale inside the kernel (a bnb block of 64, or a part of a larger one)
ROWS = 64   # rows of W per warpgroup MMA
# Real K index -> logical K index within a 64-weight block (see the module docstring).
PERMUTATION = np.array([
    1, 0, 9, 8, 17, 16, 25, 24, 33, 32, 41, 40, 49, 48, 57, 56,
    3, 2, 11, 10, 19, 18, 27, 26, 35, 34, 43, 42, 51, 50, 59, 58,
    5, 4, 13, 12, 21, 20, 29, 28, 37, 36, 45, 44, 53, 52, 61, 60,
    7, 6, 15, 14, 23, 22, 31, 30, 39, 38, 47, 46, 55, 54, 63, 62])
_GATHER = np.argsort(PERMUTATION)  # x_logical[..., j] = x[..., _GATHER[j]]


def permute_activations(x: jax.Array) -> jax.Array:
  """``x[..., K]`` in the decoder's K order (``x_out[..., PERMUTATION[k]] = x[..., k]``)."""
  *lead, k = x.shape
  blocks = x.reshape(*lead, k // BLOCK, BLOCK)
  return jnp.take(blocks, jnp.asarray(_GATHER, jnp.int32), axis=-1).reshape(*lead, k)


def derive_permutation() -> np.ndarray:
  """:data:`PERMUTATION` recomputed from Mosaic's WGMMA layout (numpy, no GPU): where each
  code of a thread's words lands among the same thread's operand elements."""
  from jax.experimental.mosaic.gpu import fragmented_array as fa
  from jax.experimental.mosaic.gpu import utils as mgpu_utils

  def positions(layout, shape):
    strides = tuple(mgpu_utils.get_contiguous_strides(shape))
    tile_strides = layout.tiling.tile_strides(strides)
    tiled = layout.tiled_tiling_shape
    dyn = tile_strides[-layout.tiled_tiling_rank:]

    def split(index, dims):
      sizes = [d.times if isinstance(d, fa.Replicated) else tiled[d] for d in dims]
      full = [0] * len(tiled)
      for d, st, sz in zip(dims, mgpu_utils.get_contiguous_strides(tuple(sizes)), sizes):
        if not isinstance(d, fa.Replicated):
          full[d] = (index // st) % sz
      return full

    out = {}
    for thread in range(128):
      base = sum(i * s for i, s in zip(split(thread // 32, layout.warp_dims), dyn)) + \
          sum(i * s for i, s in zip(split(thread % 32, layout.lane_dims), dyn))
      for reg in np.ndindex(layout.registers_shape(shape)):
        lin = base + sum(i * s for i, s in zip(reg, tile_strides))
        out[(thread, reg)] = [np.unravel_index(lin + v * dyn[layout.vector_dim], shape)
                              for v in range(layout.vector_length)]
    return out

  words = positions(fa.WGMMA_LAYOUT, (ROWS, BLOCK // 8))
  elems = positions(fa.WGMMA_LAYOUT, (ROWS, BLOCK))
  perm = -np.ones(BLOCK, np.int64)
  for thread in range(128):
    for row in range(ROWS):
      ws = [e for key in sorted(r for (t, r) in words if t == thread)
            for e in words[(thread, key)] if e[0] == row]
      es = sorted((e for key in (r for (t, r) in elems if t == thread)
                   for e in elems[(thread, key)] if e[0] == row), key=lambda e: e[1])
      for i, (_, col) in enumerate(ws):
        for p in range(8):
          real, logical = 8 * int(col) + (p ^ 1), int(es[8 * i + p][1])
          if perm[real] not in (-1, logical):
            raise AssertionError("the decoder's K order differs between threads")
          perm[real] = logical
  return perm
