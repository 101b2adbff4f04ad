"""Triton (``pl.pallas_call``) kernels: matmul against a packed 4-bit weight.

The weight is decoded tile by tile in registers and never exists in memory in
a wider dtype. The two nibbles of a byte are the even and odd K elements, so
instead of interleaving the decoded weight, the activations are split into
even and odd columns (``tt.split``) and each tile does two dots:
``y += x_even @ W_hi.T + x_odd @ W_lo.T``. The transposed kernel (input
gradient ``dy @ W``) produces the even and odd output columns and joins them
on store. Scales are decoded in the kernel, including bitsandbytes' nested
(double-quantized) absmax: one byte and an L1-resident table lookup per block.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels._src import common
from pallas_kernels._src import numerics
from pallas_kernels._src.common import masked_load
from pallas_kernels._src.matmul_4bit import layout as layout_lib
from pallas_kernels._src.matmul_4bit.config import MAX_GEMV_ROWS, MatmulConfig
from pallas_kernels._src.matmul_4bit.reference import precision_for
from pallas_kernels._src.matmul_4bit.weight import (PackedWeight, WeightFormat, check_operands,
                                                    combine_scales)


def _and(a, b):
  if a is None:
    return b
  return a if b is None else a & b


class _Weight:
  """The weight refs of one kernel and the tile decoder."""

  def __init__(self, refs, fmt: WeightFormat, n: int, nkb: int, dtype, interpret: bool):
    self.fmt, self.n, self.nkb, self.dtype, self.interpret = fmt, n, nkb, dtype, interpret
    self.data, self.scales, self.lut = refs[:3]
    rest = list(refs[3:])
    self.table: Any = rest.pop(0) if fmt.scale_kind == "byte" else None
    self.group: Any = None  # Pallas refs (nested formats only)
    self.offset: Any = None
    if fmt.nested_blocksize:
      self.group, self.offset = rest.pop(0), rest.pop(0)
    self.used = len(refs) - len(rest)

  def decode(self, n0, kb0, bn: int, tkb: int, lookup: str = "select", dtype=None):
    """(W_hi, W_lo): ``[bn, tkb * blocksize / 2]`` even and odd K elements of rows n0.."""
    fmt = self.fmt
    half = fmt.blocksize // 2
    rmask = common.tile_mask(n0, bn, self.n)
    data = masked_load(self.data.at[pl.ds(n0, bn), pl.ds(kb0, tkb), :],
                 None if rmask is None else rmask[:, None, None])
    raw = masked_load(self.scales.at[pl.ds(n0, bn), pl.ds(kb0, tkb)],
                None if rmask is None else rmask[:, None])
    base = raw if fmt.scale_kind == "float" else self.table[raw.astype(jnp.int32)]
    group = offset = None
    if fmt.nested_blocksize:
      rows = n0 + jax.lax.broadcasted_iota(jnp.int32, (bn, tkb), 0)
      cols = kb0 + jax.lax.broadcasted_iota(jnp.int32, (bn, tkb), 1)
      gidx = jnp.minimum((rows * self.nkb + cols) // fmt.nested_blocksize,
                         self.group.shape[0] - 1)
      group = self.group[gidx]
      offset = self.offset[jnp.zeros((bn, tkb), jnp.int32)]
    s = combine_scales(base, group, offset, fmt, mul_rn=None if self.interpret else common.mul_rn)
    if rmask is not None:  # rows past N must be zero whatever their scale decodes to
      s = jnp.where(rmask[:, None], s, 0.0)
    b = data.astype(jnp.int32)
    s3 = jnp.broadcast_to(s[:, :, None], b.shape)
    out_dtype = self.dtype if dtype is None else dtype

    def scaled(nib):
      # The select tree costs more instructions than one gather from the
      # L1-resident table but measured 1.5x faster inside the matmul on an
      # H100 (docs/benchmarks.md): the gathers stall the load units.
      v = numerics.select_lut(nib, fmt.lut) if lookup == "select" else self.lut[nib]
      y = numerics.flush_subnormals(v * s3) if self.interpret else common.mul_ftz(v, s3)
      y = y.astype(self.dtype)  # the weight is rounded once to the activation dtype
      return y.astype(out_dtype).reshape(bn, tkb * half)

    return scaled(b >> 4), scaled(b & 0xF)


def _split_parts(x3: jax.Array):
  r, h, _ = x3.shape
  even, odd = jax.lax.split(x3, (1, 1), axis=2)
  return even.reshape(r, h), odd.reshape(r, h)


def _forward_kernel(x_ref, *refs, fmt, cfg, m, n, nkb, has_bias, dtype, interpret):
  w = _Weight(refs, fmt, n, nkb, dtype, interpret)
  bias_ref = refs[w.used] if has_bias else None
  out_ref = refs[-1]
  bm, bn, tkb = cfg.block_m, cfg.block_n, cfg.block_k // fmt.blocksize
  half = fmt.blocksize // 2
  i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  m0, n0 = i * bm, j * bn
  mmask = common.tile_mask(m0, bm, m)
  steps = nkb // tkb
  lo, hi = common.split_range(s, steps, cfg.split_k)
  prec = precision_for(dtype)
  dims = (((1,), (1,)), ((), ()))

  def body(t, acc):
    kb0 = t * tkb
    x3 = masked_load(x_ref.at[pl.ds(m0, bm), pl.ds(kb0 * half, tkb * half), :],
               None if mmask is None else mmask[:, None, None])
    xe, xo = _split_parts(x3)
    w_hi, w_lo = w.decode(n0, kb0, bn, tkb, lookup=cfg.lookup)
    acc += jax.lax.dot_general(xe, w_hi, dims, precision=prec, preferred_element_type=jnp.float32)
    acc += jax.lax.dot_general(xo, w_lo, dims, precision=prec, preferred_element_type=jnp.float32)
    return acc

  acc = jax.lax.fori_loop(lo, hi, body, jnp.zeros((bm, bn), jnp.float32))
  nmask = common.tile_mask(n0, bn, n)
  omask = _and(None if mmask is None else mmask[:, None],
               None if nmask is None else nmask[None, :])
  if cfg.split_k == 1:
    if bias_ref is not None:
      acc += masked_load(bias_ref.at[pl.ds(n0, bn)], nmask)[None, :]
    common.masked_store(out_ref.at[pl.ds(m0, bm), pl.ds(n0, bn)], acc.astype(dtype), omask)
  else:
    common.masked_store(out_ref.at[pl.ds(s * m + m0, bm), pl.ds(n0, bn)], acc, omask)


def _gemv_kernel(x_ref, *refs, fmt, cfg, m, n, nkb, dtype, interpret):
  """Few rows of x: CUDA-core multiply-adds, no tensor-core layout shuffles.

  Each program keeps float32 partial products of its ``[block_n, block_k/2]``
  tile per row of x and reduces them once at the end.
  """
  w = _Weight(refs, fmt, n, nkb, dtype, interpret)
  out_ref = refs[-1]
  bn, tkb = cfg.block_n, cfg.block_k // fmt.blocksize
  bkh = tkb * fmt.blocksize // 2
  j, s = pl.program_id(0), pl.program_id(1)
  n0 = j * bn
  steps = nkb // tkb
  lo, hi = common.split_range(s, steps, cfg.split_k)

  def body(t, accs):
    kb0 = t * tkb
    w_hi, w_lo = w.decode(n0, kb0, bn, tkb, lookup=cfg.lookup, dtype=jnp.float32)
    out = []
    for r in range(m):
      x2 = x_ref[r, pl.ds(kb0 * (fmt.blocksize // 2), bkh), :]
      xe, xo = _split_parts(x2[None].astype(jnp.float32))
      out.append(accs[r] + w_hi * xe + w_lo * xo)
    return tuple(out)

  zeros = jnp.zeros((bn, bkh), jnp.float32)
  accs = jax.lax.fori_loop(lo, hi, body, tuple(zeros for _ in range(m)))
  nmask = common.tile_mask(n0, bn, n)
  for r in range(m):
    common.masked_store(out_ref.at[s * m + r, pl.ds(n0, bn)], jnp.sum(accs[r], axis=1),
                        nmask)


def _transposed_kernel(dy_ref, *refs, fmt, cfg, m, n, nkb, dtype, interpret):
  w = _Weight(refs, fmt, n, nkb, dtype, interpret)
  out_ref = refs[-1]
  bm, bn, tkb = cfg.block_m, cfg.block_n, cfg.block_k // fmt.blocksize
  bkh = tkb * fmt.blocksize // 2
  i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  m0, kb0 = i * bm, j * tkb
  mmask = common.tile_mask(m0, bm, m)
  steps = pl.cdiv(n, bn)
  lo, hi = common.split_range(s, steps, cfg.split_k)
  prec = precision_for(dtype)
  dims = (((1,), (0,)), ((), ()))

  def body(t, carry):
    acc_e, acc_o = carry
    n0 = t * bn
    nmask = common.tile_mask(n0, bn, n)
    dmask = _and(None if mmask is None else mmask[:, None],
                 None if nmask is None else nmask[None, :])
    dy = masked_load(dy_ref.at[pl.ds(m0, bm), pl.ds(n0, bn)], dmask)
    w_hi, w_lo = w.decode(n0, kb0, bn, tkb, lookup=cfg.lookup)
    acc_e += jax.lax.dot_general(dy, w_hi, dims, precision=prec,
                                 preferred_element_type=jnp.float32)
    acc_o += jax.lax.dot_general(dy, w_lo, dims, precision=prec,
                                 preferred_element_type=jnp.float32)
    return acc_e, acc_o

  zeros = jnp.zeros((bm, bkh), jnp.float32)
  acc_e, acc_o = jax.lax.fori_loop(lo, hi, body, (zeros, zeros))
  out = jnp.stack([acc_e, acc_o], axis=-1)
  omask = None if mmask is None else mmask[:, None, None]
  row0 = m0 if cfg.split_k == 1 else s * m + m0
  value = out.astype(dtype) if cfg.split_k == 1 else out
  common.masked_store(out_ref.at[pl.ds(row0, bm), pl.ds(kb0 * fmt.blocksize // 2, bkh), :],
                      value, omask)


def matmul_4bit_triton(
    x: jax.Array,
    w: PackedWeight,
    *,
    fmt: WeightFormat,
    config: MatmulConfig,
    transpose: bool = False,
    bias: jax.Array | None = None,
    interpret: bool = False,
) -> jax.Array:
  """Kernel version of ``matmul_4bit_reference`` (same arguments plus launch config).

  ``config`` must already fit the shape (``config.fit``). The kernel decodes the bytes in
  their stored K order: for ``fmt.layout == "wgmma"`` the activations go in (forward), or
  the input gradient comes out (``transpose``), reordered by XLA.
  """
  check_operands(x, w, fmt, transpose)
  if fmt.layout != "bnb":
    stored = dataclasses.replace(fmt, layout="bnb")
    if transpose:
      return layout_lib.to_real_order(
          matmul_4bit_triton(x, w, fmt=stored, config=config, transpose=True,
                             interpret=interpret), fmt.layout)
    return matmul_4bit_triton(layout_lib.to_stored_order(x, fmt.layout), w, fmt=stored,
                              config=config, bias=bias, interpret=interpret)
  n, k = w.shape
  m = x.shape[0]
  if bias is not None and transpose:
    raise ValueError("`bias` applies to the forward product only.")
  dtype = jnp.dtype(x.dtype)
  nkb = k // fmt.blocksize
  tkb = config.block_k // fmt.blocksize
  if config.block_k % fmt.blocksize or nkb % tkb:
    raise ValueError(f"config block_k={config.block_k} must hold whole blocks of "
                     f"{fmt.blocksize} and divide K={k}.")
  split = config.split_k
  inputs = [w.data, w.scales, jnp.asarray(fmt.lut, jnp.float32)]
  if fmt.scale_kind == "byte":
    assert w.scale_table is not None  # check_operands: byte scales come with their table
    inputs.append(w.scale_table)
  if fmt.nested_blocksize:
    assert w.group_scales is not None and w.offset is not None  # check_operands
    inputs += [w.group_scales, w.offset]
  common_kw = dict(fmt=fmt, cfg=config, m=m, n=n, nkb=nkb, dtype=dtype, interpret=interpret)
  if config.gemv and not transpose:
    if m > MAX_GEMV_ROWS:
      raise ValueError(f"The GEMV kernel handles at most {MAX_GEMV_ROWS} rows, got M={m}.")
    kernel = functools.partial(_gemv_kernel, **common_kw)
    grid: tuple[int, ...] = (pl.cdiv(n, config.block_n), split)
    out_shape: tuple[int, ...] = (split * m, n)
    args = [x.reshape(m, k // 2, 2)] + inputs
  elif transpose:
    kernel = functools.partial(_transposed_kernel, **common_kw)
    grid = (pl.cdiv(m, config.block_m), nkb // tkb, split)
    out_shape = (split * m if split > 1 else m, k // 2, 2)
    args = [x] + inputs
  else:
    has_bias = bias is not None and split == 1
    kernel = functools.partial(_forward_kernel, has_bias=has_bias, **common_kw)
    grid = (pl.cdiv(m, config.block_m), pl.cdiv(n, config.block_n), split)
    out_shape = (split * m if split > 1 else m, n)
    args = [x.reshape(m, k // 2, 2)] + inputs
    if has_bias:
      assert bias is not None
      args.append(bias.astype(jnp.float32))
  partial = split > 1 or (config.gemv and not transpose)  # float32 partial sums
  out = pl.pallas_call(
      kernel,
      grid=grid,
      out_shape=jax.ShapeDtypeStruct(out_shape, jnp.float32 if partial else dtype),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
      name="jaxfp4_matmul_4bit_t" if transpose else "jaxfp4_matmul_4bit",
  )(*args)
  if partial:
    out = out.reshape(split, m, *out.shape[1:]).sum(axis=0)
    if bias is not None:
      out = out + bias.astype(jnp.float32)[None, :]
    out = out.astype(dtype)
  return out.reshape(m, -1)
