"""Block rules of the 4-bit formats: block max, scale, and element encoding.

A :class:`BlockCodec` bundles, for one format, how a block's max |x| becomes a
(stored scale, multiplier) pair and how a scaled value becomes a nibble. It is
elementwise ``jnp`` plus one small table lookup (see ``encoders.py``), so the
same object drives the XLA path and the Pallas kernel.

Fast-math convention: bitsandbytes' CUDA kernels are built with
``--use_fast_math`` (bnb_format.md §1.5): subnormal inputs and products are
flushed to sign-preserving zero and ``1/absmax`` is ``rcp.approx.ftz.f32``.
XLA on the CPU flushes subnormals too but XLA on the GPU does not, so the
multiply is written as an explicit ``mul.ftz`` (PTX in the kernel, an emulation
in XLA) and both backends agree.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import encoders
from jaxfp4._src import formats
from pallas_kernels import canonical_nan, flush_subnormals, mul_ftz

NONFINITE_POLICIES = ("propagate", "bnb", "raise")
_INF_BITS = 0x7F800000
_MIN_NORMAL_BITS = 0x00800000
# Above 2**126, 1/amax is a float32 subnormal that the fast-math reciprocal and
# multiply flush to 0: the whole block would encode as 0 (bitsandbytes does,
# docs/measurements/lut_2026-12-06b/bnb_huge.txt). Such blocks are scaled by
# 1/4 first, which keeps 1/(amax/4) normal.
HUGE_AMAX_BITS = 0x7E800000  # 2**126
HUGE_PRESCALE = 0.25
_NEG_FLT_MAX_BITS = np.float32(-np.finfo(np.float32).max).view(np.int32)

__all__ = ["flush_subnormals", "mul_ftz"]  # re-exported for the other modules


def _int_bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.int32)


def default_reciprocal(x: jax.Array) -> jax.Array:
  # On the GPU XLA lowers this to rcp.approx, bit-identical to bitsandbytes'
  # MUFU.RCP (bnb_format.md §1.5); on the CPU it is correctly rounded.
  return 1.0 / x


def block_amax(parts: list[jax.Array], nonfinite: str, axis: int = -1) -> jax.Array:
  """Max |x| over ``axis`` of float32 arrays that each hold part of every block.

  Computed on the bit patterns: for |x| the int32 order is the float order and
  Inf/NaN sort above every finite value, so one integer max also finds them.

  ``"propagate"``/``"raise"``: a block holding NaN or +-Inf gets a NaN max, so
  the whole block decodes to NaN instead of silently to other numbers.
  ``"bnb"``: like bitsandbytes' CUDA ``fmaxf`` reduce, NaN is ignored and Inf
  is kept; an all-NaN block keeps the reduction's start value -FLT_MAX
  (observed in bitsandbytes 0.50.2's golden output).

  A subnormal maximum is flushed to 0 (the inputs themselves are not: the
  encoder's multiply flushes them, see :meth:`BlockCodec.multiply`).
  """
  if not parts:
    raise ValueError("block_amax needs at least one array in `parts`.")
  m: jax.Array | None = None
  for x in parts:
    a = _int_bits(x) & 0x7FFFFFFF
    if nonfinite == "bnb":
      a = jnp.where(a > _INF_BITS, -1, a)  # NaN: skipped
    pm = jnp.max(a, axis=axis)
    m = pm if m is None else jnp.maximum(m, pm)
  assert m is not None
  m = jnp.where((m >= 0) & (m < _MIN_NORMAL_BITS), 0, m)
  if nonfinite == "bnb":
    m = jnp.where(m < 0, _NEG_FLT_MAX_BITS, m)
    return jax.lax.bitcast_convert_type(m, jnp.float32)
  amax = jax.lax.bitcast_convert_type(m, jnp.float32)
  return jnp.where(m >= _INF_BITS, canonical_nan(m.shape), amax)


ScaleFn = Callable[..., tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class BlockCodec:
  """One format's block rule, in the form the kernels and the reference share.

  Attributes:
    scale: ``scale(amax, reciprocal, *scalars) -> (stored, multiplier)``.
    encode_scaled: ``(scaled value, base, thr) -> int32 nibble``.
    table: the encoder's bucket table (see ``encoders.py``).
    nonfinite: policy for NaN/Inf in a block (see :func:`block_amax`).
  """

  scale: ScaleFn
  encode_scaled: Callable[..., jax.Array]
  table: encoders.BucketTable
  nonfinite: str = "propagate"

  def prepare(self, x: jax.Array) -> jax.Array:
    """Input values as float32."""
    return x.astype(jnp.float32)

  def amax(self, parts: list[jax.Array], axis: int = -1) -> jax.Array:
    """Block max |x| over ``axis`` of several arrays holding one block each."""
    return block_amax(parts, self.nonfinite, axis)

  def tables(self) -> tuple[jax.Array, jax.Array]:
    """The bucket table as arrays (constants in XLA, kernel inputs in Pallas)."""
    base, thr = self.table.arrays()
    return jnp.asarray(base), jnp.asarray(thr)

  def scaled(self, x: jax.Array, mult: jax.Array, multiply=None) -> jax.Array:
    """``x * mult`` (broadcast) as CUDA's ``mul.ftz.f32``.

    A negative ``mult`` (only from the absmax rules under ``"propagate"`` and
    ``"raise"``) marks a block whose max is above 2**126: ``-mult`` is
    ``1/(amax/4)``, so ``x`` is multiplied by 1/4 first (exact for every value
    that does not vanish at this scale anyway). Other blocks take exactly
    bitsandbytes' single multiply.
    """
    mul = multiply or mul_ftz
    if self.nonfinite == "bnb":
      return mul(x, mult)
    huge = mult < 0
    return mul(jnp.where(huge, x * jnp.float32(HUGE_PRESCALE), x), jnp.abs(mult))

  def encode(self, x: jax.Array, mult: jax.Array, tables=None, multiply=None) -> jax.Array:
    """Nibbles of ``x`` scaled by ``mult`` (broadcast, see :meth:`scaled`).

    ``multiply`` must be CUDA's ``mul.ftz.f32`` (a subnormal input or product
    becomes a zero of the same sign): the kernel passes the PTX instruction,
    the XLA path its emulation.
    """
    base, thr = self.tables() if tables is None else tables
    return self.encode_scaled(self.scaled(x, mult, multiply), base, thr)


def _reciprocal_or_nan(amax, reciprocal):
  # An all-zero block: bitsandbytes computes 0 * (1/0) = NaN for every element.
  # Returning NaN directly gives the same for subnormal inputs too, which
  # x * inf would turn into +-inf.
  r = reciprocal(jnp.where(amax == 0, 1.0, amax))
  return jnp.where(amax == 0, canonical_nan(amax.shape), r)


def _absmax_scale(amax, reciprocal):
  return amax, _reciprocal_or_nan(amax, reciprocal)


def _e2m1_absmax_scale(amax, reciprocal):
  return amax, _reciprocal_or_nan(amax, reciprocal) * jnp.float32(formats.E2M1_MAX)


def _keeping_huge(rule, factor):
  """``rule`` with blocks above 2**126 marked as :meth:`BlockCodec.scaled` reads them:
  multiplier ``-(factor / (amax / 4))`` instead of a flushed ``factor / amax``."""
  def scale(amax, reciprocal):
    stored, mult = rule(amax, reciprocal)
    bits = _int_bits(amax)
    huge = (bits > HUGE_AMAX_BITS) & (bits < _INF_BITS)
    r = reciprocal(jnp.where(huge, amax * jnp.float32(HUGE_PRESCALE), 1.0))
    if factor != 1.0:
      r = r * jnp.float32(factor)
    return stored, jnp.where(huge, -r, mult)
  scale.__name__ = rule.__name__ + "_keeping_huge"
  return scale


_absmax_scale_keeping_huge = _keeping_huge(_absmax_scale, 1.0)
_e2m1_absmax_scale_keeping_huge = _keeping_huge(_e2m1_absmax_scale, formats.E2M1_MAX)


def _e8m0_exponent(amax: jax.Array) -> jax.Array:
  """OCP MX §6.3 shared exponent ``floor(log2(amax)) - emax_elem`` (emax = 2).

  Read from the float32 exponent bits, exact on every backend, and clamped to
  [-126, 127]: the E8M0 range (microsoft/microxcaling ``_quantize_mx``) minus
  2**-127, which is a float32 subnormal that XLA's CPU backend flushes to zero.
  Only blocks with 0 < amax < 2**-124 are affected (one binade coarser).
  """
  e_field = (_int_bits(amax) >> 23) & 0xFF
  return jnp.clip(e_field - 127 - 2, -126, 127)


def pow2(e: jax.Array) -> jax.Array:
  """2**e as float32 for integer e in [-126, 127], exactly."""
  return jax.lax.bitcast_convert_type((e + 127) << 23, jnp.float32)


def _mx_scale(amax, reciprocal):
  del reciprocal  # power-of-two scale: the multiply is exact
  e = _e8m0_exponent(amax)
  # An all-zero block stores E8M0 byte 0 (2**-127), as the spec's rule gives.
  byte = jnp.where(amax == 0, 0, e + 127)
  nan = jnp.isnan(amax)
  byte = jnp.where(nan, 255, byte).astype(jnp.uint8)
  # finite amax gives e <= 125, so 2**-e is a normal float32
  mult = jnp.where(nan, canonical_nan(amax.shape), pow2(-jnp.minimum(e, 126)))
  return byte, mult


E4M3_MAX = 448.0


def _nv_scale(amax, reciprocal, encode_div6, global_decode):
  """NVFP4 block scale (arXiv 2509.25149 App. B; TE reference_nvfp4.py).

  ``encode_div6`` is the per-tensor encode scale over 6, precomputed so that no
  division chain is left for XLA to rewrite (it turns ``(a / b) / c`` into
  ``a / (b * c)`` and ``a / const`` into ``a * (1 / const)`` under ``jit``).
  """
  block_decode = jnp.minimum(amax * encode_div6, E4M3_MAX)
  e4m3 = block_decode.astype(jnp.float8_e4m3fn)
  denom = e4m3.astype(jnp.float32) * global_decode
  # A block whose scale underflows to 0 decodes to 0 whatever its codes are.
  mult = jnp.where(denom > 0, reciprocal(jnp.where(denom > 0, denom, 1.0)), 0.0)
  nan = jnp.isnan(amax)  # explicit: Triton's minimum above drops NaN
  mult = jnp.where(nan, canonical_nan(amax.shape), mult)
  byte = jnp.where(nan, 0x7F, jax.lax.bitcast_convert_type(e4m3, jnp.uint8)).astype(jnp.uint8)
  return byte, mult


_RULES: dict[str, tuple[ScaleFn, str]] = {
    "nf4": (_absmax_scale, "nf4"),
    "fp4": (_absmax_scale, "fp4"),
    "e2m1": (_e2m1_absmax_scale, "e2m1"),
    "mxfp4": (_mx_scale, "e2m1"),
    "nvfp4": (_nv_scale, "e2m1"),
}


_KEEPING_HUGE: dict[ScaleFn, ScaleFn] = {_absmax_scale: _absmax_scale_keeping_huge,
                 _e2m1_absmax_scale: _e2m1_absmax_scale_keeping_huge}


def codec_for(quant_type: str, nonfinite: str = "propagate") -> BlockCodec:
  """The :class:`BlockCodec` of ``quant_type`` under a non-finite policy."""
  formats.get_format(quant_type)
  scale, element = _RULES[quant_type]
  if nonfinite != "bnb":
    # bitsandbytes encodes a block above 2**126 as 0; the other policies keep it
    scale = _KEEPING_HUGE.get(scale, scale)
  return BlockCodec(scale=scale, encode_scaled=encoders.ENCODERS[element],
                    table=encoders.TABLES[element], nonfinite=nonfinite)


def nvfp4_global_scales(amax_tensor: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-tensor NVFP4 scales ``(encode / 6, decode)`` from the tensor's max |x|.

  encode = 6 * 448 / amax (arXiv 2509.25149 App. B), so encode / 6 = 448 / amax,
  one division by a run-time value; decode = amax / (6 * 448) is written as a
  multiply by a float32 constant, the same on every backend. A zero or
  non-finite tensor max gives unit scales, as TransformerEngine's reference
  falls back to encode = 1.
  """
  ok = jnp.isfinite(amax_tensor) & (amax_tensor > 0)
  safe = jnp.where(ok, amax_tensor, 6.0 * E4M3_MAX)
  encode_div6 = E4M3_MAX / safe
  decode = safe * jnp.float32(1.0 / (6.0 * E4M3_MAX))
  return encode_div6, decode
