"""``WeightSharding``: how a packed 4-bit ``W[out, in]`` is split over a device mesh.

bitsandbytes stores ``W`` row-major and flat, in blocks of ``blocksize``
consecutive elements (bnb_format.md §3). When ``in % blocksize == 0`` no block
crosses a row, so the same bytes viewed as ``uint8 [out, in / 2]`` with scales
``[out, in / blocksize]`` (the *row view*) can be split along either axis
without splitting a block: rows are output features (column parallel), block
columns are input features (row parallel). A sharded weight is always held in
its row view; the shard bodies rebuild a flat local ``QuantState`` from it.

Double-quantized scales group 256 consecutive absmax entries. Column-parallel
shards keep them nested when each shard holds whole groups; otherwise (and
for row-parallel splits, which cut across groups) :func:`shard_4bit` stores
the float32 absmax they decode to, which is exact: the decoded weight does not
change, the scales take 4 bytes per block instead of 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxfp4._src import double_quant
from jaxfp4._src import quantize as quantize_lib
from jaxfp4._src import repack
from jaxfp4._src.state import QuantState

Axes = str | tuple[str, ...] | None


def axis_tuple(value: Axes, name: str) -> tuple[str, ...]:
  if value is None:
    return ()
  if isinstance(value, str):
    return (value,)
  if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
    return tuple(value)
  raise ValueError(f"`{name}` must be a mesh axis name, a tuple of names or None, got {value!r}.")


def spec_entry(value: Axes):
  """A PartitionSpec entry for ``value`` (None, one name or a tuple)."""
  axes = axis_tuple(value, "axes")
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else axes


@dataclasses.dataclass(frozen=True)
class WeightSharding:
  """Mesh axes that split a 4-bit weight ``W[out, in]`` and the activations it meets.

  Attributes:
    mesh: the device mesh.
    out_axis: axes splitting the output features (column parallel). Each
      shard computes its own output columns; nothing is reduced.
    in_axis: axes splitting the input features on block boundaries (row
      parallel). Each shard computes a partial product and the SPMD
      partitioner sums them (an all-reduce or reduce-scatter).
    batch_axis: axes splitting the activations' rows (tokens): data
      parallelism. A weight axis that is also a batch axis is FSDP: the weight
      is stored split over it and each shard all-gathers the 4-bit bytes
      (not a widened copy) just before its product.

  Example:
    >>> import jax, jaxfp4.sharding
    >>> mesh = jax.make_mesh((1,), ("tp",))
    >>> ws = jaxfp4.sharding.WeightSharding(mesh, out_axis="tp")
  """

  mesh: Mesh
  out_axis: Axes = None
  in_axis: Axes = None
  batch_axis: Axes = None

  def __post_init__(self):
    if not isinstance(self.mesh, Mesh):
      raise ValueError(f"`mesh` must be a jax.sharding.Mesh, got {type(self.mesh).__name__}.")
    names = tuple(self.mesh.axis_names)
    fields = {f: axis_tuple(getattr(self, f), f) for f in ("out_axis", "in_axis", "batch_axis")}
    for f, axes in fields.items():
      for a in axes:
        if a not in names:
          raise ValueError(f"`{f}` names mesh axis {a!r}, but the mesh's axes are {names}.")
      if len(set(axes)) != len(axes):
        raise ValueError(f"`{f}` repeats a mesh axis: {axes}.")
      object.__setattr__(self, f, axes)
    if set(fields["out_axis"]) & set(fields["in_axis"]):
      raise ValueError(f"`out_axis` {self.out_axis} and `in_axis` {self.in_axis} share a mesh axis; "
                       "one axis can split a weight along one dimension only.")
    batch = set(fields["batch_axis"])
    for f in ("out_axis", "in_axis"):
      split = set(fields[f])
      if split & batch and not split <= batch:
        raise ValueError(f"`{f}` {getattr(self, f)} is partly a batch axis ({self.batch_axis}); "
                         "an FSDP weight axis must be entirely in `batch_axis` or not at all.")

  # The fields are typed as the constructor takes them (``Axes``); __post_init__
  # stores tuples, and axis_tuple() below narrows them for the type checker.
  def size(self, axes: Axes) -> int:
    return math.prod(self.mesh.shape[a] for a in axis_tuple(axes, "axes"))

  @property
  def compute_out_axis(self) -> tuple[str, ...]:
    """Output-feature axes the product stays split over (FSDP axes are gathered first)."""
    out = axis_tuple(self.out_axis, "out_axis")
    return () if set(out) <= set(axis_tuple(self.batch_axis, "batch_axis")) else out

  @property
  def compute_in_axis(self) -> tuple[str, ...]:
    """Input-feature axes whose partial products are summed (FSDP axes are gathered first)."""
    inp = axis_tuple(self.in_axis, "in_axis")
    return () if set(inp) <= set(axis_tuple(self.batch_axis, "batch_axis")) else inp


def check_whole_rows(state: QuantState) -> None:
  """Raises ValueError unless ``state`` is a 2-D weight whose rows hold whole blocks."""
  if len(state.shape) != 2:
    raise ValueError(f"Only 2-D weights [out, in] can be sharded, got shape {state.shape}.")
  k, bs = state.shape[1], state.blocksize
  if k % bs:
    raise ValueError(
        f"The weight's in_features K={k} is not a multiple of its blocksize={bs}: blocks "
        "straddle rows, so its shards would split blocks; quantize with a blocksize dividing K.")


def check_shardable(state: QuantState, ws: WeightSharding) -> None:
  """Raises ValueError unless ``ws`` splits ``state``'s weight on whole rows and blocks."""
  if not isinstance(ws, WeightSharding):
    raise ValueError(f"`sharding` must be a jaxfp4.sharding.WeightSharding, got {type(ws).__name__}.")
  check_whole_rows(state)
  n, k = state.shape
  bs = state.blocksize
  p_out, p_in = ws.size(ws.out_axis), ws.size(ws.in_axis)
  if n % p_out:
    raise ValueError(
        f"`out_axis` {ws.out_axis} splits the weight's N={n} output features into {p_out} "
        f"shards; N must be a multiple of {p_out}.")
  if k and (k // bs) % p_in:
    raise ValueError(
        f"`in_axis` {ws.in_axis} splits the weight's K={k} input features into {p_in} shards "
        f"of {k / p_in:g}, which splits its blocksize-{bs} blocks: K / {p_in} must be a "
        f"multiple of {bs} (K has {k // bs} blocks per row).")


def keeps_nesting(state: QuantState, ws: WeightSharding) -> bool:
  """Whether each shard holds whole 256-entry groups of a nested absmax."""
  if state.state2 is None:
    return False
  if not (ws.out_axis or ws.in_axis):
    return True
  n, k = state.shape
  per_shard = (n // ws.size(ws.out_axis)) * (k // state.blocksize)
  return not ws.in_axis and per_shard % state.state2.blocksize == 0


def weight_specs(state: QuantState, ws: WeightSharding) -> tuple[P, QuantState]:
  """PartitionSpecs of the row-view bytes and of every leaf of ``state``.

  ``state`` is the one :func:`shard_4bit` returns (row view, nesting as kept).
  """
  # The spec tree has the state's structure with a PartitionSpec in each array
  # field, hence the Any-typed leaves.
  w: Any = P(spec_entry(ws.out_axis), spec_entry(ws.in_axis))
  state2 = None
  if state.state2 is not None:
    split: Any = P(spec_entry(ws.out_axis)) if (ws.out_axis and not ws.in_axis) else P()
    state2 = dataclasses.replace(state.state2, absmax=split)
  specs = dataclasses.replace(
      state, absmax=w, state2=state2,
      offset=None if state.offset is None else cast(Any, P()),
      global_scale=None if state.global_scale is None else cast(Any, P()))
  return w, specs


def row_view(packed: jax.typing.ArrayLike, state: QuantState) -> tuple[jax.Array, QuantState]:
  """The same bytes as uint8 ``[N, K / 2]`` and the scales as ``[N, K / blocksize]``."""
  data = quantize_lib.check_packed(packed, state)
  n, k = state.shape
  return (data.reshape(n, k // 2),
          dataclasses.replace(state, absmax=state.absmax.reshape(n, k // state.blocksize)))


def flat_view(packed: jax.Array, state: QuantState) -> tuple[jax.Array, QuantState]:
  """Inverse of :func:`row_view`: bitsandbytes' ``[(numel + 1) // 2, 1]`` bytes, flat scales."""
  data = quantize_lib.check_packed(packed, state)
  return data.reshape(-1, 1), dataclasses.replace(state, absmax=state.absmax.reshape(-1))


def denest(state: QuantState) -> QuantState:
  """A non-nested state whose float32 absmax is exactly what the nested one decodes to."""
  if state.state2 is None:
    return state
  flat = double_quant.decompress_absmax(
      state.absmax.reshape(-1), state.offset, state.state2.absmax,
      code=np.asarray(state.state2.code, np.float32), blocksize=state.state2.blocksize)
  return dataclasses.replace(state, absmax=flat.reshape(state.absmax.shape), offset=None, state2=None)


def shard_4bit(packed: jax.typing.ArrayLike, state: QuantState, sharding: WeightSharding
               ) -> tuple[jax.Array, QuantState]:
  """Places a 4-bit weight on ``sharding.mesh``, each device holding only its shard.

  Args:
    packed: bytes from :func:`jaxfp4.quantize_4bit` (any ``quant_storage``).
    state: their :class:`jaxfp4.QuantState`, of a 2-D ``W[out, in]``.
    sharding: the :class:`WeightSharding`.

  Returns:
    ``(packed, state)`` in the row view (uint8 ``[N, K/2]``, scales ``[N, K/blocksize]``),
    placed with :func:`weight_specs`; pass them to :func:`jaxfp4.matmul_4bit` with
    the same ``sharding``. A nested state whose groups would be split is stored
    denested (same decoded weight).

  Example:
    >>> import jax, jax.numpy as jnp, jaxfp4, jaxfp4.sharding
    >>> mesh = jax.make_mesh((1,), ("tp",))
    >>> ws = jaxfp4.sharding.WeightSharding(mesh, out_axis="tp")
    >>> packed, state = jaxfp4.quantize_4bit(jnp.ones((8, 128)), quant_type="nf4")
    >>> packed, state = jaxfp4.sharding.shard_4bit(packed, state, ws)
    >>> packed.shape, state.absmax.shape
    ((8, 64), (8, 2))
  """
  if not isinstance(state, QuantState):
    raise ValueError(f"`state` must be a QuantState, got {type(state).__name__}.")
  check_shardable(state, sharding)
  data, state = row_view(packed, state)
  return place(data, _kept_nesting(state, sharding), sharding)


def _kept_nesting(state: QuantState, ws: WeightSharding) -> QuantState:
  """``state`` (row view), denested when ``ws`` would split its nested groups."""
  return denest(state) if state.nested and not keeps_nesting(state, ws) else state


def shard_host_4bit(packed: np.ndarray, state: QuantState, sharding: WeightSharding
                    ) -> tuple[jax.Array, QuantState]:
  """:func:`shard_4bit` for bytes still on the host (e.g. a checkpoint's memory map).

  Each device's part of the packed bytes is sliced from ``packed`` and copied
  to that device alone; the whole weight never lands on one device.
  """
  check_shardable(state, sharding)
  n, k = state.shape
  raw = np.asarray(packed).view(np.uint8) if packed.dtype != np.uint8 else packed
  if raw.size != (state.numel + 1) // 2:
    raise ValueError(f"`packed` holds {raw.size} bytes but the state describes {state.numel} "
                     f"elements ({(state.numel + 1) // 2} bytes).")
  state = dataclasses.replace(state, absmax=jnp.asarray(state.absmax).reshape(n, k // state.blocksize))
  return place(raw.reshape(n, k // 2), _kept_nesting(state, sharding), sharding)


def place(data, state: QuantState, ws: WeightSharding) -> tuple[jax.Array, QuantState]:
  """Puts a row-view weight on ``ws.mesh`` with :func:`weight_specs`.

  Host bytes (a NumPy array, e.g. a memory map) are sliced per device, so only
  each device's part is read and copied.
  """
  data_spec, state_specs = weight_specs(state, ws)
  put = lambda a, s: jax.device_put(a, NamedSharding(ws.mesh, s))
  if isinstance(data, np.ndarray):
    host = data
    # np.array copies each slice, so no device buffer ever aliases the file's memory map.
    placed = jax.make_array_from_callback(host.shape, NamedSharding(ws.mesh, data_spec),
                                          lambda idx: np.array(host[idx]))
  else:
    placed = put(data, data_spec)
  return placed, jax.tree.map(put, state, state_specs)


def local_state(state: QuantState, shape: tuple[int, int]) -> QuantState:
  """The flat :class:`QuantState` of one shard's row-view leaves."""
  return dataclasses.replace(state, shape=tuple(shape), absmax=state.absmax.reshape(-1))


def check_placement(name: str, value, want: P, ws: WeightSharding) -> None:
  """For a concrete array placed on ``ws.mesh``: raises unless it is split as ``want``.

  A replicated or single-device array is accepted (each shard slices it); an
  array split some other way would need a gather, or would split blocks.
  """
  if isinstance(value, jax.core.Tracer) or not isinstance(value, jax.Array):
    return
  sharding = value.sharding
  if not isinstance(sharding, NamedSharding) or sharding.is_fully_replicated:
    return
  have = NamedSharding(ws.mesh, want)
  if not sharding.is_equivalent_to(have, value.ndim):
    raise ValueError(
        f"`{name}` is placed with {sharding.spec}, but the WeightSharding needs {want} "
        f"(row view, whole blocks per shard); place the weight with "
        "jaxfp4.sharding.shard_4bit(packed, state, sharding).")


def saved_packed(packed, state) -> np.ndarray:
  """Host bytes of ``packed`` as bitsandbytes stores them: a row view goes back to ``[n / 2, 1]``,
  a weight in another K order (``state.layout``) to bitsandbytes' order."""
  host = np.asarray(jax.device_get(packed))
  if isinstance(state, QuantState):
    host, _ = repack.bnb_bytes(host, state)
  if isinstance(state, QuantState) and len(state.shape) == 2 and host.dtype == np.uint8 and (
      host.shape == (state.shape[0], state.shape[1] // 2) and host.shape[1] != 1):
    return host.reshape(-1, 1)
  return host


def check_row_view(packed, state: QuantState) -> jax.Array:
  """Validates a sharded weight: uint8 ``[N, K/2]`` bytes and ``[N, K/blocksize]`` scales."""
  if not isinstance(state, QuantState):
    raise ValueError(f"`state` must be a QuantState, got {type(state).__name__}.")
  state.validate()
  packed = jnp.asarray(packed)
  check_whole_rows(state)
  n, k = state.shape
  want, want_s = (n, k // 2), (n, k // state.blocksize)
  if (packed.dtype != jnp.uint8 or tuple(packed.shape) != want
      or tuple(state.absmax.shape) != want_s):
    raise ValueError(
        f"A sharded weight must be in the row view, uint8 `packed` {want} and `state.absmax` "
        f"{want_s}; got {packed.dtype} {tuple(packed.shape)} and {tuple(state.absmax.shape)}. "
        "Place it with jaxfp4.sharding.shard_4bit(packed, state, sharding).")
  return packed
