"""The K order a packed weight's bytes hold: bitsandbytes' own, or the Mosaic decoder's.

``"bnb"``: element ``k`` of a row at nibble ``k`` of the row (bitsandbytes' bytes,
bnb_format.md §3: byte ``i`` holds ``2i`` high, ``2i + 1`` low); the storage and
checkpoint format. ``"wgmma"``: within every 64-weight block, nibble position ``s`` holds
real element :data:`WGMMA_ORDER` ``[s]``, which is where the Mosaic GPU kernel's decoder
puts nibble ``s`` in its wgmma operand (``lut_matmul.wgmma_layout``). A weight in that
order multiplies the activations as they are: the kernel needs no permutation of ``x``
per product (run 8's decode profile: a transpose and a reversal per Mosaic launch).

The order only moves weights inside a 64-weight block, so scales of blocks of 64 and
more are unchanged; smaller blocks (MXFP4's 32, NVFP4's 16) keep ``"bnb"``. A route that
decodes the bytes in stored order instead takes the activations in that order
(:func:`to_stored_order`) and gives the input gradient back in the real one
(:func:`to_real_order`).
"""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

Arr = TypeVar("Arr", np.ndarray, jax.Array)  # host (the writers) or device arrays

LAYOUTS = ("bnb", "wgmma")
BLOCK = 64  # weights a "wgmma" permutation stays within


def wgmma_order(pos):
  """The real element at nibble position ``pos`` of a 64-weight block stored in the Mosaic
  decoder's order (numpy or jnp integers): position ``8 w + e`` (word
  ``w = 2 a + c``, element ``e = 2 p + h``) holds ``32 c + 8 p + 2 a + 1 - h``
  (``wgmma_layout.derive_permutation`` recomputes it from Mosaic's WGMMA layout)."""
  return 32 * ((pos >> 3) & 1) + 8 * ((pos & 7) >> 1) + 2 * (pos >> 4) + 1 - (pos & 1)


WGMMA_ORDER = wgmma_order(np.arange(BLOCK))
WGMMA_ORDER.setflags(write=False)


def _xp(a):
  """numpy for host arrays, else jax.numpy."""
  return np if isinstance(a, np.ndarray) else jnp


def check_layout(layout: str, blocksize: int, k: int | None = None) -> None:
  """Raises a ValueError unless ``layout`` is known and fits the blocksize and K."""
  if layout not in LAYOUTS:
    raise ValueError(f"`layout` must be one of {LAYOUTS}, got {layout!r}.")
  if layout == "bnb":
    return
  if blocksize < BLOCK:
    raise ValueError(f"layout={layout!r} needs a blocksize of {BLOCK} or more (it moves "
                     f"weights within 64-weight blocks), got {blocksize}.")
  if k is not None and k % BLOCK:
    raise ValueError(f"layout={layout!r} needs K to be a multiple of {BLOCK}, got K={k}.")


def stored_order(layout: str) -> np.ndarray:
  """``order[s]``: the real element (within its 64-weight block) at nibble position ``s``."""
  return np.arange(BLOCK) if layout == "bnb" else WGMMA_ORDER


def to_stored_order(x: Arr, layout: str) -> Arr:
  """``x[..., K]`` in the weight's stored order (``out[..., s] = x[..., order[s]]`` per
  block), for a route that decodes the bytes as stored: ``x @ W.T`` is then
  ``to_stored_order(x) @ W_stored.T``. A reversal and a transpose of each block viewed as
  ``[2, 4, 4, 2]`` (no gather), which XLA can fuse with the producer of ``x``."""
  if layout == "bnb":
    return x
  *lead, k = x.shape
  blocks = x.reshape(*lead, k // BLOCK, 2, 4, 4, 2)[..., ::-1]  # [c, p, a, 1 - h]
  return _xp(x).moveaxis(blocks, -2, -4).reshape(*lead, k)  # [a, c, p, h]


def blocks_to_stored_order(x: jax.Array) -> jax.Array:
  """``[rows, 64]`` activations of one block each, in the ``"wgmma"`` stored order, inside a
  Pallas-Triton kernel: :func:`to_stored_order` with the reversal written as a split and a
  join (Triton has no reversal). Triton folds the move into the layout the loaded tile goes
  to (offline SASS, docs/benchmarks.md: no more instructions per loop body than the bnb
  order, where a gathered load from global memory made the GEMV a third slower on an H100)."""
  rows = x.shape[0]
  lo, hi = jnp.split(x.reshape(rows, 2, 4, 4, 2), 2, axis=-1)  # [c, p, a, 1 - h]
  return jnp.transpose(jnp.concatenate([hi, lo], axis=-1), (0, 3, 1, 2, 4)).reshape(rows, 64)


def to_real_order(y: Arr, layout: str) -> Arr:
  """Inverse of :func:`to_stored_order`: ``y[..., K]`` indexed by stored position back in
  the real K order (the input gradient of a route that decodes the bytes as stored)."""
  if layout == "bnb":
    return y
  *lead, k = y.shape
  blocks = y.reshape(*lead, k // BLOCK, 4, 2, 4, 2)  # [a, c, p, h]
  return _xp(y).moveaxis(blocks, -4, -2)[..., ::-1].reshape(*lead, k)  # [c, p, a, 1 - h]


def repack_bytes(data: Arr, *, source: str, target: str) -> Arr:
  """uint8 bytes ``[..., K/2]`` of rows in K order ``source`` rewritten in ``target``
  (numpy in, numpy out: the checkpoint writers convert on the host).

  Codes are unpacked high nibble first, moved within each 64-weight block and packed
  again; ``repack_bytes(repack_bytes(d, source=a, target=b), source=b, target=a)`` is
  ``d`` byte for byte.
  """
  for name, value in (("source", source), ("target", target)):
    if value not in LAYOUTS:
      raise ValueError(f"`{name}` must be one of {LAYOUTS}, got {value!r}.")
  if source == target:
    return data
  *lead, half = data.shape
  if (2 * half) % BLOCK:
    raise ValueError(f"Rows of {2 * half} codes are not whole 64-weight blocks.")
  b = data.astype(np.uint8)
  codes = _xp(data).stack([b >> 4, b & 0xF], axis=-1).reshape(*lead, 2 * half)
  codes = to_real_order(codes, source)  # real K order
  codes = to_stored_order(codes, target).reshape(*lead, half, 2)
  return (codes[..., 0] << 4) | codes[..., 1]
