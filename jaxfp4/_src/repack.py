"""``repack_4bit``: a packed weight's bytes in another K order (``QuantState.layout``).

bitsandbytes' order (``"bnb"``) is the storage and checkpoint format. The Mosaic GPU
tensor-core kernel decodes each 64-weight block in an order of its own
(``pallas_kernels/_src/matmul_4bit/layout.py``); with the bnb bytes it permutes the
activations once per product, an XLA kernel per launch in a decode step. A weight
repacked once at load time into ``"wgmma"`` needs none of that, and every other route
honours the order too (the GEMV and Triton tensor-core kernels move their activations to
match in registers, the dequantize routes reorder ``x`` or the input gradient). Scales do
not move: the order only moves weights inside a 64-weight block, so blocks of 64 and more
are whole. On an H100 (run 9, docs/benchmarks.md) the Mosaic product at M = 16 took 27.1 us
on repacked bytes against 31.1.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxfp4._src import packing
from jaxfp4._src import quantize as quantize_lib
from jaxfp4._src.state import QuantState
from pallas_kernels._src.matmul_4bit import layout as k_order

LAYOUTS = k_order.LAYOUTS


def repack_4bit(packed: jax.typing.ArrayLike, state: QuantState, *,
                layout: str = "wgmma") -> tuple[jax.Array, QuantState]:
  """The same 2-D weight with its bytes in K order ``layout``.

  Args:
    packed: the packed bytes in an integer ``quant_storage`` (uint8, the default and
      bitsandbytes', int8, (u)int16, (u)int32), or the sharded row view.
    state: their :class:`jaxfp4.QuantState`; ``state.layout`` says the order they hold.
    layout: ``"wgmma"`` (the Mosaic GPU decoder's order: decode steps without an
      activation permutation) or ``"bnb"`` (back to bitsandbytes' bytes).

  Returns:
    ``(packed, state)``: bytes of the same dtype and shape, and the state with ``layout``
    set (scales shared, unchanged). Converting back gives the original bytes exactly.

  Example:
    >>> import jax, jaxfp4
    >>> w = jax.random.normal(jax.random.key(0), (32, 128))
    >>> packed, state = jaxfp4.quantize_4bit(w, quant_type="nf4")
    >>> p2, s2 = jaxfp4.repack_4bit(packed, state, layout="wgmma")
    >>> bool((jaxfp4.dequantize_4bit(p2, s2) == jaxfp4.dequantize_4bit(packed, state)).all())
    True
    >>> bool((jaxfp4.repack_4bit(p2, s2, layout="bnb")[0] == packed).all())
    True
  """
  data = quantize_lib.check_packed(packed, state)
  packed = jax.numpy.asarray(packed)
  _check_repackable(packed.dtype, state, layout)
  if layout == state.layout:
    return packed, state
  n, k = state.shape
  rows = k_order.repack_bytes(data.reshape(n, k // 2), source=state.layout, target=layout)
  storage = packing.storage_dtype(packed.dtype)
  out = packing.to_storage(rows.reshape(-1), storage).reshape(packed.shape)
  return out, with_layout(state, layout)


def can_repack(packed, state: QuantState, layout: str) -> bool:
  """Whether :func:`repack_4bit` takes ``(packed, state)`` to ``layout``: already there, or
  a 2-D weight whose blocks and K the order fits, its bytes in an integer storage."""
  try:
    _check_repackable(packed.dtype, state, layout)
  except ValueError:
    return False
  return True


def _check_repackable(storage, state: QuantState, layout: str) -> None:
  """Raises a ValueError naming what keeps ``repack_4bit`` from taking bytes of dtype
  ``storage`` and ``state`` to ``layout`` (nothing does where the state is already there)."""
  k_order.check_layout(layout, state.blocksize)  # a known name first
  if layout == state.layout:
    return
  if len(state.shape) != 2:
    raise ValueError(f"repack_4bit takes a 2-D weight [N, K]; got shape {state.shape}.")
  k_order.check_layout(layout, state.blocksize, state.shape[1])
  # Arbitrary bytes viewed as a float type do not survive every GPU operation bit for bit:
  # on an H100 (run 9) a bfloat16 view came back with 3 of 6144 NaN payloads changed.
  if not jax.numpy.issubdtype(storage, jax.numpy.integer):
    raise ValueError(
        f"repack_4bit rewrites bytes, which needs them in an integer `quant_storage` (uint8, "
        f"int8, uint16, int16, uint32, int32), got {jax.numpy.dtype(storage).name}; view them "
        "as uint8 first (jax.lax.bitcast_convert_type(packed, jnp.uint8).reshape(-1, 1)).")


def with_layout(state: QuantState, layout: str) -> QuantState:
  """``state`` with another ``layout`` (its arrays shared; nothing copied to the host)."""
  fields = {name: getattr(state, name) for name in state.__dataclass_fields__}
  return QuantState.unchecked(**{**fields, "layout": layout})


def bnb_bytes(packed: np.ndarray, state: QuantState) -> tuple[np.ndarray, QuantState]:
  """Host bytes and state as bitsandbytes stores them: a ``"wgmma"`` weight converted on
  the host (the checkpoint writers), anything else as it is."""
  if state.layout == "bnb":
    return packed, state
  n, k = state.shape  # on the host, numpy views keep every byte whatever the dtype
  raw = np.ascontiguousarray(packed).view(np.uint8).reshape(n, k // 2)
  rows = k_order.repack_bytes(raw, source=state.layout, target="bnb")
  return rows.view(packed.dtype).reshape(packed.shape), with_layout(state, "bnb")
