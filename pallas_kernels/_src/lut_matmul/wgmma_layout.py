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

from pallas_kernels._src.matmul_4bit.layout import WGMMA_ORDER

BLOCK = 64  # weights per scale inside the kernel (a bnb block of 64, or a part of a larger one)
ROWS = 64   # rows of W per warpgroup MMA
# Stored K index -> logical K index within a 64-weight block (see the module docstring). A
# weight stored in that order (layout "wgmma", matmul_4bit.layout) decodes in the real order.
PERMUTATION = WGMMA_ORDER


def permute_activations(x: jax.Array) -> jax.Array:
  """``x[..., K]`` in the decoder's K order (``x_out[..., PERMUTATION[k]] = x[..., k]``).

  :data:`PERMUTATION` sends real index ``16 a + 2 b + c`` of a block to ``8 b + 2 a + 1 - c``
  (a < 4, b < 8, c < 2): a reversal and a transpose of the block viewed as ``[4, 8, 2]``,
  which XLA can fuse with the op that produces ``x`` (a gather was a kernel of its own in
  run 7's decode profile, one per Mosaic launch)."""
  *lead, k = x.shape
  blocks = x.reshape(*lead, k // BLOCK, 4, 8, 2)[..., ::-1]
  return jnp.swapaxes(blocks, -3, -2).reshape(*lead, k)


def register_positions(layout, shape: tuple[int, ...]) -> dict:
  """``{(thread, register index): [logical index of each vector element]}`` for a Mosaic
  ``TiledLayout`` over ``shape``, computed in numpy as Mosaic's ``thread_idxs`` does."""
  from jax.experimental.mosaic.gpu import fragmented_array as fa
  from jax.experimental.mosaic.gpu import utils as mgpu_utils

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
      out[(thread, reg)] = [tuple(int(i) for i in np.unravel_index(
          lin + v * dyn[layout.vector_dim], shape)) for v in range(layout.vector_length)]
  return out


# The decoder's register schedule (wgmma.py uses these; the CPU emulator in the tests too).
def word_block_and_half(word_register: tuple[int, ...]) -> tuple[int, int]:
  """A word register's 64-weight block ``j`` within the tile and its row half ``h``: register
  ``(0, j, 0, 0, h, ...)`` holds words ``8j + 2 (lane % 4) + {0, 1}`` of row
  ``16 warp + lane / 4 + 8h``."""
  return word_register[1], word_register[4]


def operand_register(word_register: tuple[int, ...], pair: int) -> tuple[int, ...]:
  """The operand register that gets codes ``2 pair`` and ``2 pair + 1`` of the word
  register's 16 codes (8 per word): code ``e = 8 (2j + w) + p`` of block ``j`` sits in operand
  register ``e // 2``, whose columns are ``8 (e // 2) + 2 (lane % 4) + {0, 1}``."""
  reg = list(word_register)
  reg[1] = 8 * word_register[1] + pair
  return tuple(reg)


def scale_register(half: int) -> tuple[int, ...]:
  """The register of a ``[64]`` scale column (WGMMA row layout) holding row half ``h``."""
  return (0, 0, half, 0, 0)


def slab_column(first: int, block: int, thread: int, blocksize: int) -> int:
  """The slab column of the scale for word register block ``j = block`` of a tile whose
  first weight is ``first`` (along the CTA's K range): the register's 16 weights are real
  indices ``first + 64 j + 16 (lane % 4) + [0, 16)``, inside one block of ``blocksize``
  (16 or more). For blocks of 64 and more the lane term is 0: all four lanes of a row
  share the scale."""
  return (first + BLOCK * block) // blocksize + (16 * (thread % 4)) // blocksize


def slab_row(thread: int, half: int) -> int:
  """The tile row of a thread's row half ``h``: ``16 warp + lane / 4 + 8h``."""
  return 16 * ((thread // 32) % 4) + (thread % 32) // 4 + 8 * half


def derive_permutation() -> np.ndarray:
  """:data:`PERMUTATION` recomputed from Mosaic's WGMMA layout (numpy, no GPU): where each
  code of a thread's words lands among the same thread's operand elements."""
  from jax.experimental.mosaic.gpu import fragmented_array as fa

  words = register_positions(fa.WGMMA_LAYOUT, (ROWS, BLOCK // 8))
  elems = register_positions(fa.WGMMA_LAYOUT, (ROWS, BLOCK))
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
