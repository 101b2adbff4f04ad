"""The Mosaic GPU kernel's in-register decoders (:mod:`wgmma` runs them in its pipeline).

:func:`weight_decoder` turns a tile's packed words into the ``wgmma`` register operand (one
warp shuffle per code for the table value, one multiply by the block scale, ``cvt.rn`` packing
two weights), in Mosaic's WGMMA layout and the K order of :mod:`wgmma_layout`.
:func:`scale_slab_decoder` turns a CTA's byte-coded (and double-quantized) scales into its
float32 scale slab in shared memory. Both are ``plgpu.inline_mgpu`` bodies written in MLIR;
Mosaic GPU has no interpreter for them, so the CPU tests emulate the register schedule in
numpy and lower every variant, and the GPU tests compare the compiled kernel with the exact
product.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax.numpy as jnp
import numpy as np

from pallas_kernels._src.lut_matmul import wgmma_layout as layout_lib
from pallas_kernels._src.lut_matmul.wgmma_layout import BLOCK, ROWS
from pallas_kernels._src.matmul_4bit.weight import WeightFormat

try:  # Mosaic GPU ships with jaxlib; its Python side changes between JAX releases.
  from jax.experimental.pallas import mosaic_gpu as plgpu
  from jax.experimental.mosaic.gpu import fragmented_array as fa
  from jax.experimental.mosaic.gpu import utils as mgpu_utils
  from jax._src.lib.mlir import ir
  from jax._src.lib.mlir.dialects import arith, llvm, memref, vector
  IMPORTED = True
except ImportError:  # pragma: no cover - depends on the installed jaxlib
  IMPORTED = False


def load(ref, layout):
  # JAX 0.10 requires plgpu.load's index argument; JAX 0.11 deprecates it.
  load: Any = plgpu.load
  if inspect.signature(load).parameters["idx"].default is inspect.Parameter.empty:
    return load(ref, None, layout=layout, optimized=False)
  return load(ref, layout=layout, optimized=False)


def _asm(result_type, operands, text: str, constraints: str) -> Any:
  """One PTX instruction with one result (``llvm.inline_asm``, present in every JAX
  this supports; Mosaic's own ``inline_ptx`` helper is not)."""
  return llvm.inline_asm(result_type, operands, text, constraints)


def weight_decoder(tile_k: int, dtype, slab_rows: int | None = None, blocksize: int = BLOCK,
                   scaled: bool = True):
  """``decode(words, table, *scales)``: int32 ``[64, tile_k/8]`` words (WGMMA layout), the
  table (lane ``t`` holds entry ``t % 16``) and one ``[64]`` scale column per 64 weights ->
  the ``[64, tile_k]`` operand in ``dtype``, WGMMA layout, logical K order.

  Unscaled (``scaled=False``, ``WgmmaConfig.post_scale``): ``decode(words, table)`` -> one
  ``[64, 64]`` operand per 64-weight block, each table value rounded to ``dtype``.

  With ``slab_rows`` (the first row of this tile in the slab), ``scales`` is the shared
  memory slab ``[tile_n, cols]`` and one int32 column index per 64 weights: each thread
  reads its two rows' scales itself (a strided view of the slab cannot be loaded). Blocks
  smaller than 64 (``blocksize`` 16 or 32) add the thread's own column offset within the 64
  (``layout_lib.slab_column``)."""
  nblk = tile_k // BLOCK
  cvt = "cvt.rn.bf16x2.f32" if jnp.dtype(dtype) == jnp.bfloat16 else "cvt.rn.f16x2.f32"
  if not scaled:
    return _unscaled_decoder(tile_k, dtype, cvt)
  scale_types: tuple[Any, ...]
  if slab_rows is None:
    scale_types = tuple(plgpu.Layout.WGMMA.reduce(1) for _ in range(nblk))
  else:
    scale_types = (plgpu.RefType(),) + tuple(plgpu.Layout.WG_SPLAT(()) for _ in range(nblk))

  @plgpu.inline_mgpu(
      arg_types=(plgpu.Layout.WGMMA, plgpu.Layout.WG_STRIDED((128,), vec_size=1))
      + scale_types,
      return_type=plgpu.ShapeDtypeStruct((ROWS, tile_k), dtype, layout=plgpu.Layout.WGMMA),
  )
  def decode(ctx, words, table, *scales):
    del ctx
    i32, f32 = ir.IntegerType.get_signless(32), ir.F32Type.get()
    index = ir.IndexType.get()
    if slab_rows is not None:  # layout_lib.slab_row: 16 warp + lane / 4 (+ 8 h below)
      slab, cols = scales[0], [c.registers.flat[0] for c in scales[1:]]
      tid = mgpu_utils.thread_idx()
      c = lambda v: mgpu_utils.c(v, i32)
      base = arith.addi(arith.muli(arith.remui(arith.divui(tid, c(32)), c(4)), c(16)),
                        arith.divui(arith.remui(tid, c(32)), c(4)))
      base = arith.addi(base, c(slab_rows))
      if blocksize < BLOCK:  # + 16 (lane % 4) // blocksize: the lane's block within the 64
        lane_col = arith.divui(arith.muli(arith.remui(tid, c(4)), c(16)), c(blocksize))
        cols = [arith.addi(col, lane_col) for col in cols]
      col_idx = [arith.index_cast(index, col) for col in cols]
    half = ir.BF16Type.get() if jnp.dtype(dtype) == jnp.bfloat16 else ir.F16Type.get()
    pick = lambda v, i: vector.extract(v, dynamic_position=[],
                                       static_position=ir.DenseI64ArrayAttr.get([i]))
    tab = pick(table.registers.flat[0], 0)
    out = np.empty(fa.WGMMA_LAYOUT.registers_shape((ROWS, tile_k)), dtype=object)
    # The register schedule is layout_lib's (word_block_and_half, scale_register,
    # operand_register); tests/test_wgmma_kernel.py runs it in a numpy emulator.
    for idx in np.ndindex(words.registers.shape):
      j, h = layout_lib.word_block_and_half(idx)
      if slab_rows is None:
        scale = pick(scales[j].registers[layout_lib.scale_register(h)], 0)
      else:
        row = arith.index_cast(index, arith.addi(base, mgpu_utils.c(8 * h, i32)))
        scale = memref.load(slab, [row, col_idx[j]])
      vals = []
      for w in range(2):
        word = pick(words.registers[idx], w)
        for p in range(8):
          # shfl.idx reads bits 0-3 of the lane operand (segment mask 0x10): no masking.
          code = word if p == 0 else arith.shrui(word, mgpu_utils.c(4 * p, i32))
          v = _asm(f32, [tab, code], "shfl.sync.idx.b32 $0, $1, $2, 0x101f, 0xffffffff;",
                   "=f,f,r")
          vals.append(arith.mulf(v, scale))
      for q in range(8):  # cvt puts its first operand in the high half: element 1
        pair = _asm(i32, [vals[2 * q + 1], vals[2 * q]], f"{cvt} $0, $1, $2;", "=r,f,f")
        out[layout_lib.operand_register(idx, q)] = mgpu_utils.bitcast(
            pair, ir.VectorType.get((2,), half))
    return fa.FragmentedArray(_registers=out, _layout=fa.WGMMA_LAYOUT, _is_signed=None)

  return decode


def _unscaled_decoder(tile_k: int, dtype, cvt: str):
  """:func:`weight_decoder` without scales: a shift and a shuffle per code, ``cvt.rn`` per
  pair, the operand split into its 64-weight blocks (block ``j`` holds the registers whose
  column group is ``8 j + q``, as ``layout_lib.operand_register`` places them)."""
  nblk = tile_k // BLOCK
  block = plgpu.ShapeDtypeStruct((ROWS, BLOCK), dtype, layout=plgpu.Layout.WGMMA)

  @plgpu.inline_mgpu(
      arg_types=(plgpu.Layout.WGMMA, plgpu.Layout.WG_STRIDED((128,), vec_size=1)),
      return_type=tuple(block for _ in range(nblk)),
  )
  def decode(ctx, words, table):
    del ctx
    i32, f32 = ir.IntegerType.get_signless(32), ir.F32Type.get()
    half = ir.BF16Type.get() if jnp.dtype(dtype) == jnp.bfloat16 else ir.F16Type.get()
    pick = lambda v, i: vector.extract(v, dynamic_position=[],
                                       static_position=ir.DenseI64ArrayAttr.get([i]))
    tab = pick(table.registers.flat[0], 0)
    outs = [np.empty(fa.WGMMA_LAYOUT.registers_shape((ROWS, BLOCK)), dtype=object)
            for _ in range(nblk)]
    for idx in np.ndindex(words.registers.shape):
      j, _ = layout_lib.word_block_and_half(idx)
      vals = []
      for w in range(2):
        word = pick(words.registers[idx], w)
        for p in range(8):
          code = word if p == 0 else arith.shrui(word, mgpu_utils.c(4 * p, i32))
          vals.append(_asm(f32, [tab, code],
                           "shfl.sync.idx.b32 $0, $1, $2, 0x101f, 0xffffffff;", "=f,f,r"))
      for q in range(8):  # cvt puts its first operand in the high half: element 1
        pair = _asm(i32, [vals[2 * q + 1], vals[2 * q]], f"{cvt} $0, $1, $2;", "=r,f,f")
        reg = list(layout_lib.operand_register(idx, q))
        reg[1] -= 8 * j  # the column group within block j
        outs[j][tuple(reg)] = mgpu_utils.bitcast(pair, ir.VectorType.get((2,), half))
    return tuple(fa.FragmentedArray(_registers=o, _layout=fa.WGMMA_LAYOUT, _is_signed=None)
                 for o in outs)

  return decode


def slab_scale_column(slab_rows: int):
  """``column(slab, col)``: the ``[64]`` float32 scales of slab column ``col`` for the 64 rows
  from ``slab_rows``, in the WGMMA row layout (each thread reads its two rows, as the slab
  decoder does: a strided column view of the slab cannot be loaded)."""

  @plgpu.inline_mgpu(
      arg_types=(plgpu.RefType(), plgpu.Layout.WG_SPLAT(())),
      return_type=plgpu.ShapeDtypeStruct((ROWS,), jnp.float32,
                                         layout=plgpu.Layout.WGMMA.reduce(1)),
  )
  def column(ctx, slab, col):
    del ctx
    i32, f32, index = ir.IntegerType.get_signless(32), ir.F32Type.get(), ir.IndexType.get()
    c = lambda v: mgpu_utils.c(v, i32)
    tid = mgpu_utils.thread_idx()
    base = arith.addi(arith.muli(arith.remui(arith.divui(tid, c(32)), c(4)), c(16)),
                      arith.divui(arith.remui(tid, c(32)), c(4)))
    base = arith.addi(base, c(slab_rows))
    col_idx = arith.index_cast(index, col.registers.flat[0])
    regs = np.empty(fa.WGMMA_ROW_LAYOUT.registers_shape((ROWS,)), dtype=object)
    for h in range(2):  # layout_lib.slab_row: 16 warp + lane / 4 + 8 h
      row = arith.index_cast(index, arith.addi(base, c(8 * h)))
      regs[layout_lib.scale_register(h)] = vector.broadcast(
          ir.VectorType.get((1,), f32), memref.load(slab, [row, col_idx]))
    return fa.FragmentedArray(_registers=regs, _layout=fa.WGMMA_ROW_LAYOUT, _is_signed=None)

  return column


def _mul_rn(a, b):
  # mul.rn is never contracted into an FMA with the add that follows (bitsandbytes
  # rounds the product, then adds the offset).
  return _asm(ir.F32Type.get(), [a, b], "mul.rn.f32 $0, $1, $2;", "=f,f,f")


def scale_slab_decoder(tile_n: int, cols: int, nkb: int, fmt: WeightFormat, n_groups: int):
  """``decode(codes, table, groups, offset, slab, row0, col0)``: the CTA's float32 scale slab
  ``[tile_n, cols]`` from the stored byte codes ``[N, K/blocksize]`` (global memory), as
  :func:`stored_scales` computes it: ``table[code]``, times the group scale of its block
  (``block // nested_blocksize``, flat over ``[N, K/blocksize]``) plus ``offset[0]`` when
  nested, times the multiplier. 128 threads share the work, then
  meet at a barrier before the pipeline reads the slab."""
  per_thread = tile_n * cols // 128
  nested = bool(fmt.nested_blocksize)

  @plgpu.inline_mgpu(
      arg_types=(plgpu.RefType(), plgpu.RefType(), plgpu.RefType(), plgpu.RefType(),
                 plgpu.RefType(), plgpu.Layout.WG_SPLAT(()), plgpu.Layout.WG_SPLAT(())),
  )
  def decode(ctx, codes, table, groups, offset_ref, slab, row0, col0):
    del ctx
    i32, index = ir.IntegerType.get_signless(32), ir.IndexType.get()
    c = lambda v: mgpu_utils.c(v, i32)
    ix = lambda v: arith.index_cast(index, v)
    r0, c0 = row0.registers.flat[0], col0.registers.flat[0]
    tid = arith.remui(mgpu_utils.thread_idx(), c(128))
    offset = memref.load(offset_ref, [ix(c(0))]) if nested else None

    @mgpu_utils.fori(c(per_thread), None)
    def _(e, carry):
      i = arith.addi(tid, arith.muli(e, c(128)))
      row, col = arith.divui(i, c(cols)), arith.remui(i, c(cols))
      grow, gcol = arith.addi(r0, row), arith.addi(c0, col)
      code = arith.extui(i32, memref.load(codes, [ix(grow), ix(gcol)]))
      scale = memref.load(table, [ix(code)])
      if nested:
        group = arith.divui(arith.addi(arith.muli(grow, c(nkb)), gcol),
                            c(fmt.nested_blocksize))
        group = arith.minui(group, c(n_groups - 1))
        assert offset is not None
        scale = arith.addf(_mul_rn(scale, memref.load(groups, [ix(group)])), offset)
      if fmt.scale_multiplier != 1.0:
        scale = _mul_rn(scale, mgpu_utils.c(float(fmt.scale_multiplier), ir.F32Type.get()))
      memref.store(scale, slab, [ix(row), ix(col)])
      return carry

    mgpu_utils.warpgroup_barrier()

  return decode
