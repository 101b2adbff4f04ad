"""``QuantState``: the frozen pytree that describes a packed 4-bit tensor.

Array leaves: ``absmax`` (float32 per block; uint8 codes when nested; E8M0 or
E4M3 bytes for mxfp4/nvfp4), ``offset`` and ``state2`` (double quantization),
``global_scale`` (nvfp4). Static metadata: ``shape``, ``dtype``, ``blocksize``,
``quant_type``, ``code``. ``as_dict``/``from_dict`` read and write the key names
and JSON blob of bitsandbytes ``QuantState.as_dict(packed=True)``
(bnb_format.md §5), so a Hugging Face bnb-4bit tensor group round-trips.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats
from pallas_kernels._src.matmul_4bit import layout as k_order

_BNB_PREFIX = "bitsandbytes__"
_OWN_PREFIX = "jaxfp4__"  # formats bitsandbytes cannot read get their own tag


def _static(**kw):
  return dataclasses.field(metadata=dict(static=True), **kw)


def _register(cls):
  """Registers a frozen dataclass as a pytree whose unflatten skips ``__init__``.

  Rebuilding a node after ``jit``, ``tree_map`` or an NNX graph traversal must
  not re-run :meth:`QuantState.__post_init__`'s value checks (a host copy of
  the scales each time); only a state built by hand is checked.
  """
  fields = dataclasses.fields(cls)
  data = tuple(f.name for f in fields if not f.metadata.get("static", False))
  meta = tuple(f.name for f in fields if f.metadata.get("static", False))

  def flatten_with_keys(x):
    return ([(jax.tree_util.GetAttrKey(n), getattr(x, n)) for n in data],
            tuple(getattr(x, n) for n in meta))

  def flatten(x):
    return [getattr(x, n) for n in data], tuple(getattr(x, n) for n in meta)

  def unflatten(aux, children):
    return _unchecked(cls, **dict(zip(meta, aux)), **dict(zip(data, children)))

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
  return cls


def _unchecked(cls, **kw):
  """``cls(**kw)`` without ``__post_init__``: for states built from checked parts."""
  obj = object.__new__(cls)
  for f in dataclasses.fields(cls):
    object.__setattr__(obj, f.name, kw[f.name] if f.name in kw else f.default)
  return obj


def _concrete(a) -> np.ndarray | None:
  """``a`` on the host if its values are known here (not a tracer, not a placeholder)."""
  if isinstance(a, np.ndarray):
    return a
  if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.is_fully_addressable:
    return np.asarray(a)
  return None


_NEG_FLT_MAX = np.float32(-np.finfo(np.float32).max)


@_register
@dataclasses.dataclass(frozen=True)
class NestedState:
  """8-bit quantization state of a double-quantized absmax.

  Attributes:
    absmax: float32 ``[ceil(num_blocks / blocksize)]``.
    code: the sorted 256-entry map (bitsandbytes' dynamic map).
    blocksize: absmax entries per nested block (256).
  """

  absmax: jax.Array
  code: tuple[float, ...] = _static(default=tuple(float(v) for v in formats.DYNAMIC_MAP_8BIT), repr=False)
  blocksize: int = _static(default=formats.NESTED_BLOCKSIZE)


@_register
@dataclasses.dataclass(frozen=True)
class QuantState:
  """Everything needed to decode a packed 4-bit tensor.

  Attributes:
    absmax: per-block scale. float32 max |x| for nf4/fp4/e2m1 (uint8 codes
      if nested), E8M0 bytes for mxfp4, E4M3 bytes for nvfp4.
    shape: shape of the original tensor.
    dtype: dtype of the original tensor (and of the dequantized output).
    blocksize: elements per block of the row-major flattened tensor.
    quant_type: ``"nf4"``, ``"fp4"``, ``"e2m1"``, ``"mxfp4"`` or ``"nvfp4"``.
    code: the 16-entry table (bitsandbytes' ``quant_map``).
    offset: float32 scalar mean of the absmax when nested, else None.
    state2: :class:`NestedState` when nested, else None.
    global_scale: float32 per-tensor decode scale (nvfp4), else None.
    layout: the K order the packed bytes hold: ``"bnb"`` (bitsandbytes', the storage
      and checkpoint format) or ``"wgmma"`` (within each 64-weight block, the Mosaic
      GPU decoder's order, 2-D weights with blocks of 64 and more;
      :func:`jaxfp4.repack_4bit` converts, writers convert back).
  """

  absmax: jax.Array
  shape: tuple[int, ...] = _static()
  dtype: np.dtype = _static()
  blocksize: int = _static()
  quant_type: str = _static()
  code: tuple[float, ...] = _static(repr=False)
  offset: jax.Array | None = None
  state2: NestedState | None = None
  global_scale: jax.Array | None = None
  layout: str = _static(default="bnb")

  def __post_init__(self):
    self.check_values()

  @classmethod
  def unchecked(cls, **fields) -> "QuantState":
    """A state built without :meth:`check_values`, for scales that are known
    good (fresh from the quantizer): checking them would copy them to the host."""
    return _unchecked(cls, **fields)

  def check_values(self) -> None:
    """Rejects scales that no quantizer writes; runs where a state is built.

    An absmax is a block's max |x|: never negative (bitsandbytes' one exception,
    -FLT_MAX for an all-NaN block, is allowed), and a negative one would flip
    the block's signs. Nested: the nested absmax is never negative and the
    decoded absmax is not below 0 by more than the 8-bit map's rounding. NVFP4:
    no negative E4M3 scale, and a positive finite ``global_scale``. NaN (a
    block that held NaN/Inf) is allowed. Arrays whose values are unknown here
    (tracers, placeholders) are skipped, so this also runs under ``jit``.
    """
    kind = formats.get_format(self.quant_type).scale_kind if self.quant_type in formats.QUANT_TYPES else None
    a = _concrete(self.absmax)
    if a is None or kind is None:
      return
    if kind == "absmax" and not self.nested and a.dtype == np.float32:
      neg = np.flatnonzero((a.reshape(-1) < 0) & (a.reshape(-1) != _NEG_FLT_MAX))
      if neg.size:
        raise ValueError(f"QuantState `absmax` must not be negative (it is each block's max |x|); "
                         f"block {neg[0]} has {a.reshape(-1)[neg[0]]}.")
    elif kind == "e4m3" and a.dtype == np.dtype(jnp.float8_e4m3fn):
      neg = np.flatnonzero(a.reshape(-1).astype(np.float32) < 0)
      if neg.size:
        raise ValueError(f"QuantState `absmax` (E4M3 block scales) must not be negative; "
                         f"block {neg[0]} has {a.reshape(-1)[neg[0]].astype(np.float32)}.")
      g = _concrete(self.global_scale)
      if g is not None and g.size == 1 and not (np.isfinite(g).all() and float(g.reshape(-1)[0]) > 0):
        raise ValueError(f"QuantState `global_scale` must be a positive finite float32, got {g.reshape(-1)[0]}.")
    if self.state2 is not None and a.dtype == np.uint8:
      a2, off = _concrete(self.state2.absmax), _concrete(self.offset)
      if a2 is None or off is None or a2.ndim != 1 or off.size != 1:
        return
      if np.any(a2 < 0):
        j = int(np.flatnonzero(a2 < 0)[0])
        raise ValueError(f"QuantState `state2.absmax` (the nested absmax) must not be negative; "
                         f"entry {j} has {a2[j]}.")
      code = np.asarray(self.state2.code, np.float64)
      bs2 = self.state2.blocksize
      if len(code) != 256 or a2.size * bs2 < a.size:
        return  # validate() names the shape error
      scale = a2.astype(np.float64)[np.arange(a.size) // bs2]
      with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf statistics (nonfinite="bnb")
        decoded = code[a.reshape(-1)] * scale + float(off.reshape(-1)[0])
        # the 8-bit rounding moves a decoded absmax by at most half the map's widest gap
        slack = scale * (np.max(np.diff(code)) / 2) * (1 + 1e-6) + 1e-30
        neg = np.flatnonzero(decoded < -slack)
      if neg.size:
        raise ValueError(f"QuantState `absmax` decodes to a negative value at block {neg[0]} "
                         f"({decoded[neg[0]]:.6g} from code {a.reshape(-1)[neg[0]]}, nested absmax "
                         f"{scale[neg[0]]:.6g} and `offset` {float(off.reshape(-1)[0]):.6g}); an absmax "
                         "is never negative.")

  @property
  def nested(self) -> bool:
    return self.state2 is not None

  @property
  def numel(self) -> int:
    return math.prod(self.shape)

  @property
  def num_blocks(self) -> int:
    return -(-self.numel // self.blocksize)

  @property
  def format(self) -> formats.QuantFormat:
    return formats.get_format(self.quant_type)

  def absmax_shapes(self) -> list[tuple[int, ...]]:
    """Allowed ``absmax`` shapes: flat, or ``[N, K / blocksize]`` (the row view that
    ``jaxfp4.sharding`` splits) when a 2-D weight's rows hold whole blocks."""
    shapes: list[tuple[int, ...]] = [(self.num_blocks,)]
    if len(self.shape) == 2 and self.shape[1] % self.blocksize == 0:
      shapes.append((self.shape[0], self.shape[1] // self.blocksize))
    return shapes

  def nbytes(self) -> int:
    """Bytes of the state's arrays (excluding the packed weight)."""
    leaves = jax.tree_util.tree_leaves(self)
    return int(sum(np.dtype(l.dtype).itemsize * math.prod(l.shape) for l in leaves))

  def validate(self) -> None:
    """Checks that leaves agree with the metadata; raises ValueError if not."""
    fmt = formats.get_format(self.quant_type)
    formats.resolve_blocksize(fmt, self.blocksize)
    if self.layout != "bnb" and len(self.shape) != 2:
      raise ValueError(f"QuantState layout={self.layout!r} is for 2-D weights [N, K], got "
                       f"shape {self.shape}.")
    k_order.check_layout(self.layout, self.blocksize, self.shape[-1] if self.shape else None)
    if jnp.dtype(self.dtype).name not in formats.INPUT_DTYPES:
      raise ValueError(f"QuantState `dtype` must be one of {formats.INPUT_DTYPES}, got {self.dtype}.")
    nb = self.num_blocks
    if tuple(self.absmax.shape) not in self.absmax_shapes():
      raise ValueError(
          f"QuantState `absmax` must have shape {' or '.join(map(str, self.absmax_shapes()))} "
          f"for shape={self.shape} and blocksize={self.blocksize}, got {tuple(self.absmax.shape)}.")
    want = _absmax_dtype(fmt, self.nested)
    if jnp.dtype(self.absmax.dtype) != want:
      raise ValueError(f"QuantState `absmax` must be {want.name} for quant_type="
                       f"{self.quant_type!r} (nested={self.nested}), got {self.absmax.dtype}.")
    if len(self.code) != 16:
      raise ValueError(f"QuantState `code` must have 16 entries, got {len(self.code)}.")
    if self.state2 is not None:
      if self.offset is None or tuple(jnp.shape(self.offset)) != ():
        raise ValueError("A nested QuantState needs a scalar float32 `offset`.")
      nb2 = -(-nb // self.state2.blocksize)
      if tuple(self.state2.absmax.shape) != (nb2,):
        raise ValueError(f"QuantState `state2.absmax` must have shape ({nb2},), "
                         f"got {tuple(self.state2.absmax.shape)}.")
      if len(self.state2.code) != 256:
        raise ValueError(f"`state2.code` must have 256 entries, got {len(self.state2.code)}.")
    if (fmt.scale_kind == "e4m3") != (self.global_scale is not None):
      raise ValueError("`global_scale` is required for nvfp4 and only for nvfp4.")
    if self.global_scale is not None and (
        tuple(jnp.shape(self.global_scale)) != ()
        or jnp.dtype(getattr(self.global_scale, "dtype", None)) != jnp.float32):
      raise ValueError("QuantState `global_scale` must be a float32 scalar (shape ()), got "
                       f"{getattr(self.global_scale, 'dtype', type(self.global_scale).__name__)}"
                       f"{list(jnp.shape(self.global_scale))}.")

  # --- bitsandbytes serialization ---------------------------------------------------

  def as_dict(self, packed: bool = False) -> dict[str, Any]:
    """The state as bitsandbytes ``QuantState.as_dict`` writes it.

    Args:
      packed: if True, the non-array fields go into one uint8 JSON tensor under
        ``"quant_state.bitsandbytes__<quant_type>"`` (the safetensors form).

    Returns:
      A dict of NumPy arrays (and, when ``packed=False``, Python values).
    """
    if self.layout != "bnb":
      raise ValueError(f"This state's bytes are in layout={self.layout!r}, which bitsandbytes "
                       "cannot read; convert with jaxfp4.repack_4bit(packed, state, "
                       "layout='bnb') and write that (jaxfp4's writers do it themselves).")
    fmt = self.format
    d: dict[str, Any] = {
        "quant_type": self.quant_type,
        "absmax": _host(self.absmax, self.absmax.dtype).reshape(-1),
        "blocksize": self.blocksize,
        "quant_map": np.asarray(self.code, np.float32),
        "dtype": jnp.dtype(self.dtype).name,
        "shape": tuple(int(s) for s in self.shape),
    }
    if fmt.scale_kind != "absmax":
      d["absmax"] = d["absmax"].view(np.uint8)
      d["scale_dtype"] = "float8_e8m0fnu" if fmt.scale_kind == "e8m0" else "float8_e4m3fn"
    if self.global_scale is not None:
      d["global_scale"] = _host(self.global_scale, np.float32).reshape(1)
    if self.state2 is not None:
      d.update({
          "nested_absmax": _host(self.state2.absmax, np.float32),
          "nested_blocksize": self.state2.blocksize,
          "nested_quant_map": np.asarray(self.state2.code, np.float32),
          "nested_dtype": "float32",
          "nested_offset": float(np.float32(self.offset)),
      })
    if not packed:
      return d
    tensors = {k: v for k, v in d.items() if isinstance(v, np.ndarray)}
    meta = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in d.items() if not isinstance(v, np.ndarray)}
    tag = (_BNB_PREFIX if fmt.bitsandbytes else _OWN_PREFIX) + self.quant_type
    blob = json.dumps(meta).encode("utf-8")
    tensors["quant_state." + tag] = np.frombuffer(blob, dtype=np.uint8).copy()
    return tensors

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "QuantState":
    """Builds a state from :meth:`as_dict` output or a checkpoint tensor group.

    Keys may carry a common prefix (``"model.layers.0.mlp.down_proj.weight."``).
    Raises ValueError naming the key for anything missing, extra or mismatched.
    """
    from jaxfp4._src import state_io  # one-way import; keeps parsing apart
    return state_io.state_from_dict(cls, NestedState, d)


def _host(a, dtype) -> np.ndarray:
  return np.asarray(jax.device_get(a)).astype(dtype, copy=False)


def _absmax_dtype(fmt: formats.QuantFormat, nested: bool) -> np.dtype:
  if fmt.scale_kind == "e8m0":
    return jnp.dtype(jnp.float8_e8m0fnu)
  if fmt.scale_kind == "e4m3":
    return jnp.dtype(jnp.float8_e4m3fn)
  return jnp.dtype(jnp.uint8 if nested else jnp.float32)
