"""The packed weight a 4-bit matmul reads, and how its block scales decode.

``W[N, K]`` is stored as bitsandbytes ``Linear4bit`` stores it (bnb_format.md
§2, §5): row-major, two elements per byte with the lower K index in the high
nibble, one scale per ``blocksize`` consecutive elements of a row. The kernels
take it as ``data [N, K/bs, bs/2]`` bytes and ``scales [N, K/bs]``, so a block
never straddles two rows (``K % blocksize == 0``).

Scales arrive either as float32 (bnb absmax, e2m1) or as one byte per block
that indexes a 256-entry float32 table: E8M0 (mxfp4), E4M3 times the per-tensor
scale (nvfp4, folded into the table), or bitsandbytes' 8-bit dynamic code of a
double-quantized absmax (``f32(code[b] * absmax2[block // 256]) + offset``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels._src import numerics
from pallas_kernels._src.matmul_4bit import layout as layout_lib

SCALE_KINDS = ("float", "byte")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightFormat:
  """Static description of a packed weight.

  Attributes:
    lut: the 16 decode values, indexed by nibble.
    blocksize: elements per scale (a power of two >= 16).
    scale_kind: ``"float"`` (float32 per block) or ``"byte"`` (uint8 per
      block, an index into ``PackedWeight.scale_table``).
    scale_multiplier: constant the decoded scale is multiplied by last
      (``1/6`` for e2m1's absmax).
    nested_blocksize: byte kind: when > 0, the table value is multiplied by
      ``group_scales[block // nested_blocksize]`` (rounded, no FMA) and
      ``offset`` is added: bitsandbytes' double quantization.
    layout: the K order of the bytes (:mod:`layout`): ``"bnb"`` (bitsandbytes'),
      or ``"wgmma"`` (the Mosaic decoder's, blocks of 64 and more).
  """

  lut: tuple[float, ...]
  blocksize: int
  scale_kind: str = "float"
  scale_multiplier: float = 1.0
  nested_blocksize: int = 0
  layout: str = "bnb"

  def __post_init__(self):
    if len(self.lut) != 16:
      raise ValueError(f"`lut` must have 16 entries, got {len(self.lut)}.")
    bs = self.blocksize
    if bs < 16 or bs & (bs - 1):
      raise ValueError(f"`blocksize` must be a power of two >= 16, got {bs}.")
    if self.scale_kind not in SCALE_KINDS:
      raise ValueError(f"`scale_kind` must be one of {SCALE_KINDS}, got {self.scale_kind!r}.")
    if self.nested_blocksize and self.scale_kind != "byte":
      raise ValueError("`nested_blocksize` needs scale_kind='byte'.")
    layout_lib.check_layout(self.layout, bs)


class PackedWeight(NamedTuple):
  """Arrays of a packed ``W[N, K]`` (a pytree; unused fields are None).

  Attributes:
    data: uint8 ``[N, K // blocksize, blocksize // 2]``.
    scales: float32 or uint8 ``[N, K // blocksize]``.
    scale_table: float32 ``[256]`` (byte scales).
    group_scales: float32 ``[G]``, ``G >= ceil(N * K / blocksize / nested_blocksize)``
      (nested).
    offset: float32 ``[1]`` (nested).
  """

  data: jax.Array
  scales: jax.Array
  scale_table: jax.Array | None = None
  group_scales: jax.Array | None = None
  offset: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, int]:
    n, nkb, half = self.data.shape
    return n, nkb * half * 2

  def words(self, dtype=jnp.uint32) -> jax.Array:
    """``data`` viewed as 32-bit words ``[N, K/8]`` of 8 codes each (little-endian), as the
    register-table kernels read it."""
    n, k = self.shape
    return jax.lax.bitcast_convert_type(self.data.reshape(n, k // 8, 4), dtype)


def check_weight(w: PackedWeight, fmt: WeightFormat) -> None:
  """Raises a ValueError naming the field that does not fit ``fmt``."""
  if w.data.ndim != 3 or w.data.dtype != jnp.uint8 or w.data.shape[2] * 2 != fmt.blocksize:
    raise ValueError(f"`data` must be uint8 [N, K/{fmt.blocksize}, {fmt.blocksize // 2}], "
                     f"got {w.data.dtype} {tuple(w.data.shape)}.")
  want = jnp.float32 if fmt.scale_kind == "float" else jnp.uint8
  if tuple(w.scales.shape) != tuple(w.data.shape[:2]) or w.scales.dtype != want:
    raise ValueError(f"`scales` must be {jnp.dtype(want).name} {tuple(w.data.shape[:2])}, "
                     f"got {w.scales.dtype} {tuple(w.scales.shape)}.")
  if (fmt.scale_kind == "byte") != (w.scale_table is not None):
    raise ValueError("`scale_table` is required for byte scales and only for them.")
  if bool(fmt.nested_blocksize) != (w.group_scales is not None and w.offset is not None):
    raise ValueError("`group_scales` and `offset` are required for nested scales only.")
  if w.group_scales is not None:
    g = w.group_scales.shape[0]
    need = -(-w.scales.size // fmt.nested_blocksize)
    if g < need:
      raise ValueError(f"`group_scales` must have a length >= {need}, got {g}.")


def check_operands(x: jax.Array, w: PackedWeight, fmt: WeightFormat, transpose: bool) -> None:
  """``check_weight`` plus the activations: ``[M, K]``, or ``[M, N]`` when ``transpose``."""
  check_weight(w, fmt)
  n, k = w.shape
  if x.ndim != 2 or x.shape[1] != (n if transpose else k):
    raise ValueError(f"`x` must be [M, {n if transpose else k}] for a weight [N={n}, K={k}] "
                     f"(transpose={transpose}), got {tuple(x.shape)}.")


def check_group(x: jax.Array, ws, fmt: WeightFormat, biases) -> tuple[tuple, tuple]:
  """:func:`check_operands` for every weight of a group that shares ``x``.

  Returns ``(ws, biases)`` as tuples, ``biases`` one entry (or None) per weight.
  """
  ws = tuple(ws)
  if not ws:
    raise ValueError("`ws` must hold at least one weight.")
  biases = (None,) * len(ws) if biases is None else tuple(biases)
  if len(biases) != len(ws):
    raise ValueError(f"`biases` must have one entry per weight ({len(ws)}), got {len(biases)}.")
  for w in ws:
    check_operands(x, w, fmt, transpose=False)
  return ws, biases


def combine_scales(base: jax.Array, group: jax.Array | None, offset: jax.Array | None,
                   fmt: WeightFormat, mul_rn=None) -> jax.Array:
  """Per-block float32 scale from the gathered parts.

  Args:
    base: the stored float32 scale, or ``scale_table[byte]``.
    group: ``group_scales[block // nested_blocksize]`` (nested) or None.
    offset: the nested offset, broadcastable to ``base``, or None.
    fmt: the weight format.
    mul_rn: a correctly rounded multiply that is never fused with the add
      that follows (default: a select that defeats FMA contraction).

  Returns:
    float32 scale, same shape as ``base``.
  """
  s = base
  if fmt.nested_blocksize:
    assert group is not None and offset is not None, "a nested format needs group and offset"
    # bitsandbytes: dequantize_blockwise (one rounding) then ``+= offset``.
    p = mul_rn(s, group) if mul_rn else numerics.unfused(s * group)
    s = p + offset
  if fmt.scale_multiplier != 1.0:
    s = s * jnp.float32(fmt.scale_multiplier)
  return s

