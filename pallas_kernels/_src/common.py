"""Helpers shared by the kernels: backend checks and exact PTX arithmetic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels._src.numerics import flush_subnormals, select_lut  # noqa: F401  re-export


def on_gpu() -> bool:
  """Whether the default backend is a CUDA GPU (where the kernels compile)."""
  return jax.default_backend() == "gpu"


def device_kind() -> str:
  """Normalized device kind, e.g. ``"nvidia_h100_80gb_hbm3"``."""
  kind = jax.devices()[0].device_kind
  return "".join(c if c.isalnum() else "_" for c in kind.lower())


def rcp_approx_ftz(x: jax.Array) -> jax.Array:
  """``rcp.approx.ftz.f32``: the reciprocal bitsandbytes' CUDA kernels use.

  bitsandbytes is built with ``--use_fast_math``, so ``1.0f / absmax`` compiles
  to MUFU.RCP (bnb_format.md §1.5); Triton's own division does not.
  """
  (y,) = plgpu.elementwise_inline_asm(
      "rcp.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)])
  return y


IMPLEMENTATIONS = (None, "xla", "pallas")


def choose_implementation(implementation: str | None, usable: bool, why_not: str) -> str:
  """Resolves ``implementation`` for a kernel that ``usable`` says can run.

  None picks the kernel on a GPU when it applies and the reference otherwise;
  ``"pallas"`` on input the kernel cannot handle raises ``why_not``.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
  if implementation == "pallas" and not usable:
    raise ValueError(why_not)
  if implementation is None:
    return "pallas" if usable and on_gpu() else "xla"
  return implementation


def row_masks(num_blocks: int, rows: int):
  """(mask [rows], mask [rows, 1]) of this program's rows that exist, or Nones.

  Triton's lowering does not mask a block that overhangs the array: rows past
  the end would be read and written out of bounds. The masks are only built
  when the row count does not divide evenly.
  """
  if num_blocks % rows == 0:
    return None, None
  ids = pl.program_id(0) * rows + jax.lax.broadcasted_iota(jnp.int32, (rows,), 0)
  mask = ids < num_blocks
  return mask, mask[:, None]


def tile_mask(start, size: int, limit: int):
  """``start + iota < limit`` for a tile of ``size`` rows, or None when every tile is full."""
  if limit % size == 0:
    return None
  return start + jax.lax.broadcasted_iota(jnp.int32, (size,), 0) < limit


def masked_store(ref, value, mask):
  """``ref[...] = value``, only where ``mask`` (None: everywhere)."""
  if mask is None:
    ref[...] = value
  else:
    plgpu.store(ref, value, mask=mask)


def prefetched_loop(steps, depth: int, load, compute, init):
  """``carry = compute(step, load(step), carry)`` for ``step`` in ``[0, steps)``, with
  ``depth`` steps of loads in flight: the loads of ``step + depth`` are issued before
  ``step``'s compute (``load`` must accept steps past the end). Returns the final carry."""
  if not depth:
    return jax.lax.fori_loop(0, steps, lambda step, c: compute(step, load(step), c), init)

  def body(step, state):
    ahead, carry = state
    nxt = load(step + depth)
    return ahead[1:] + (nxt,), compute(step, ahead[0], carry)

  _, carry = jax.lax.fori_loop(
      0, steps, body, (tuple(load(jnp.int32(j)) for j in range(depth)), init))
  return carry


def split_range(split, steps, split_k: int):
  """``[lo, hi)`` of the ``steps`` along the walked dimension owned by split ``split``."""
  per = pl.cdiv(steps, split_k)
  lo = split * per
  return lo, jnp.minimum(steps, lo + per)


def sum_partials(outs, biases, dtype) -> tuple[jax.Array, ...]:
  """Each ``[S, M, N]`` float32 stack of split-K partial products summed over S,
  plus its bias (float32, or None), rounded once to ``dtype``."""
  results = []
  for out, bias in zip(outs, biases):
    out = out.sum(axis=0)
    if bias is not None:
      out = out + bias.astype(jnp.float32)[None, :]
    results.append(out.astype(dtype))
  return tuple(results)


def masked_load(ref, mask):
  """``ref[...]``, with rows outside ``mask`` read as zeros (no mask: plain load)."""
  if mask is None:
    return ref[...]
  return plgpu.load(ref, mask=mask, other=jnp.zeros((), ref.dtype))


def mul_ftz(a: jax.Array, b: jax.Array) -> jax.Array:
  """``mul.ftz.f32``: subnormal inputs and product flushed, as CUDA fast-math.

  One instruction for what takes two explicit flushes in plain jnp.
  """
  b = jnp.broadcast_to(b, a.shape)
  (y,) = plgpu.elementwise_inline_asm(
      "mul.ftz.f32 $0, $1, $2;", args=[a, b], constraints="=f,f,f", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(a.shape, jnp.float32)])
  return y


def mul_rn(a: jax.Array, b: jax.Array) -> jax.Array:
  """``mul.rn.f32``: PTX never contracts an explicitly rounded multiply into an FMA."""
  (y,) = plgpu.elementwise_inline_asm(
      "mul.rn.f32 $0, $1, $2;", args=[a, b], constraints="=f,f,f", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(a.shape, jnp.float32)])
  return y


def fma(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  """``fma.rn.f32``: ``a * b + c`` in one instruction (XLA's Triton pipeline does
  not contract a multiply and an add by itself)."""
  (y,) = plgpu.elementwise_inline_asm(
      "fma.rn.f32 $0, $1, $2, $3;", args=[a, b, c], constraints="=f,f,f,f", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(a.shape, jnp.float32)])
  return y


def exact_reciprocal(x: jax.Array) -> jax.Array:
  return 1.0 / x


def deinterleave(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``[R, 2H]`` -> (even columns, odd columns), each ``[R, H]`` (tt.split)."""
  r, c = x.shape
  even, odd = jax.lax.split(x.reshape(r, c // 2, 2), (1, 1), axis=2)
  return even.reshape(r, c // 2), odd.reshape(r, c // 2)


def interleave(even: jax.Array, odd: jax.Array) -> jax.Array:
  """Inverse of :func:`deinterleave` (tt.join)."""
  r, h = even.shape
  return jnp.concatenate([even[..., None], odd[..., None]], axis=-1).reshape(r, 2 * h)


def split_pairs(w: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """uint32 words holding two 16-bit floats -> (even, odd) as float32.

  Memory is little-endian, so the element at the even index is the low half.
  """
  if jnp.dtype(dtype) == jnp.bfloat16:
    # bf16 -> f32 is a 16-bit shift of the bits: exact, no conversion needed.
    even = jax.lax.bitcast_convert_type(w << 16, jnp.float32)
    odd = jax.lax.bitcast_convert_type(w & jnp.uint32(0xFFFF0000), jnp.float32)
    return even, odd
  lo = (w & jnp.uint32(0xFFFF)).astype(jnp.uint16)
  hi = (w >> 16).astype(jnp.uint16)
  even = jax.lax.bitcast_convert_type(lo, jnp.float16).astype(jnp.float32)
  odd = jax.lax.bitcast_convert_type(hi, jnp.float16).astype(jnp.float32)
  return even, odd


def join_pairs(even: jax.Array, odd: jax.Array, dtype) -> jax.Array:
  """Inverse of :func:`split_pairs`: rounds two float32 arrays to ``dtype``."""
  e = jax.lax.bitcast_convert_type(even.astype(dtype), jnp.uint16).astype(jnp.uint32)
  o = jax.lax.bitcast_convert_type(odd.astype(dtype), jnp.uint16).astype(jnp.uint32)
  return e | (o << 16)


def as_pairs(x: jax.Array) -> jax.Array:
  """``[..., 2k]`` 16-bit floats -> ``[..., k]`` uint32 words (a free bitcast)."""
  return jax.lax.bitcast_convert_type(
      x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2), jnp.uint32)


def from_pairs(w: jax.Array, dtype) -> jax.Array:
  """Inverse of :func:`as_pairs`."""
  halves = jax.lax.bitcast_convert_type(w, dtype)
  return halves.reshape(*w.shape[:-1], w.shape[-1] * 2)

