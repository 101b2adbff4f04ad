"""Hopper tensor-core product ``W · xᵀ`` through Pallas Mosaic GPU: TMA-fed, register-table decode.

Same contract as the Triton ``"mma"`` kernel (``lut_matmul_reference(kind="mma")``):
the weight is decoded to the exact float32 ``table[nibble] * scale``, rounded once to
the activations' 16-bit type and multiplied on the tensor cores with float32
accumulation. What differs is the machinery, which is what the Triton kernel lacked
(docs/benchmarks.md, "Decode step"): ``plgpu.emit_pipeline`` keeps ``steps`` TMA copies
of the weight words, the scales and the activations in flight per CTA, and each CTA
decodes ``sub`` row tiles of 64 in turn, so that the decode of one can overlap the
asynchronous ``wgmma`` of the one before. The wgmmas of a step are waited for before the
next step: leaving one in flight across steps gave NaNs at M = 64 and 128 on an H100
(docs/benchmarks.md; an unfinished wgmma still reads its register operand).

The decode lives in registers, in Mosaic's WGMMA operand layout (``plgpu.inline_mgpu``):
the packed bytes are viewed as int32 words ``[N, K/8]`` and loaded in the WGMMA
layout, so each thread holds, for each of its rows, the 8 codes of a word; one warp
shuffle per code reads the float32 table value from the lane that holds it (the 16
entries sit in the lanes of each half-warp), one multiply applies the block scale and
``cvt.rn.bf16x2`` packs two weights. The codes land in the operand's registers in
word order, not in the weight's K order: within each 64-weight block, real index
``k`` sits at logical index ``PERMUTATION[k]`` (bitsandbytes' high-nibble-first bytes,
little-endian words, WGMMA's column pairs). The activations are permuted the same
way once per product (a reversal and a transpose in XLA), so the product is unchanged, or
the weight is stored in that order (``WeightFormat(layout="wgmma")``,
``matmul_4bit.layout``) and the activations are used as they are (``wgmma_layout``: the
permutation, and its derivation from Mosaic's own layout description, which a test holds
equal to it).

Needs JAX's Mosaic GPU backend and an sm_90 GPU; :func:`available` says whether this
process has both. ``matmul_lut(kind="mma")`` runs this kernel when given a
:class:`WgmmaConfig`, and by default only on device kinds with a recorded limit
(``lut_matmul.api.use_wgmma``). Scales reach the kernel as float32 per 64 weights in
``[K/64, N]`` order (a TMA box needs 16 bytes along its minor dimension), made by
:func:`kernel_scales` (XLA decodes double-quantized and byte-coded scales on the way), or,
with ``WgmmaConfig(slab=True)``, as stored: each CTA copies its rows' float32 scales once.
The launch parameters, what the kernel supports and the XLA-side scale preparation are in
:mod:`wgmma_config` (re-exported here).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._src import common
from pallas_kernels._src.lut_matmul import wgmma_decode as decode_lib
from pallas_kernels._src.lut_matmul.wgmma_layout import BLOCK, ROWS, permute_activations
from pallas_kernels._src.lut_matmul.wgmma_config import (  # noqa: F401  (re-exported)
    CODED_PER_THREAD, CODED_PER_THREAD_LATE, SMEM_LIMIT, WgmmaConfig, coded_slab_ok, fit,
    fit_group, kernel_scales, late_slab_applies, slab_ok, small_block_config, smem_bytes,
    stored_scales, supports)
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat

try:  # Mosaic GPU ships with jaxlib; its Python side changes between JAX releases.
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import mosaic_gpu as plgpu
  _IMPORTED = decode_lib.IMPORTED
except ImportError:  # pragma: no cover - depends on the installed jaxlib
  _IMPORTED = False


def available() -> bool:
  """Mosaic GPU imports and the default device is an sm_90 (Hopper) GPU."""
  if not (_IMPORTED and common.on_gpu()):
    return False
  return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9.")


def wgmma_partials(x_log: jax.Array, words: jax.Array | Sequence[jax.Array],
                   scales: jax.Array | Sequence[jax.Array], table: jax.Array,
                   *, config: WgmmaConfig, blocksize: int = BLOCK, slab: bool = False,
                   coded: tuple[WeightFormat, Any, Any, Any] | None = None) -> jax.Array:
  """float32 ``[P, N, Mp]`` partial sums of ``W · x_logᵀ`` (``[P, Mp, N]`` with
  ``config.transpose_out``): ``P = split_k``, or ``P = 1`` when ``config.reduce`` adds the
  split-K partials in the kernel.

  ``x_log``: ``[Mp, K]`` 16-bit activations in the decoder's K order, ``Mp % 8 == 0``;
  ``words``: int32 ``[N, K/8]``; ``scales``: float32 ``[K/64, N]`` (:func:`kernel_scales`),
  or with ``slab`` the stored ``[N, K/blocksize]`` (float32, or with ``coded`` the
  stored uint8 codes); ``table``: float32 ``[128]`` (entry ``t % 16`` at ``t``);
  ``coded``: ``(fmt, scale table [256], group scales, offset [1])``;
  ``config`` already :func:`fit` to the shape. A weight group (sequences of ``words``,
  ``scales`` and, with ``coded``, of scale tables, group scales and offsets) runs as one
  launch: each CTA finds its weight by its row tile, and ``N`` is the group's summed rows.
  """
  single = not isinstance(words, (list, tuple))
  words_t = (words,) if single else tuple(words)
  scales_t = (scales,) if single else tuple(scales)
  coded_arrays = None
  fmt = None
  if coded is not None:
    fmt, *arrays = coded
    coded_arrays = tuple((a,) if single else tuple(a) for a in arrays)
  return _partials(x_log, words_t, scales_t, table, coded_arrays, config=config,
                   blocksize=blocksize, slab=slab, coded_fmt=fmt)


# One jitted function per kernel variant: every call site with the same shapes and static
# options reuses one traced and lowered kernel (a shared MLIR function) instead of tracing
# the kernel body and serializing its Mosaic module again (about 0.1-0.25 s and 100 KB of
# module text per call site; a Llama-8B decode step has 96 of them, docs/benchmarks.md).
@functools.partial(jax.jit, static_argnames=("config", "blocksize", "slab", "coded_fmt"))
def _partials(x_log, words, scales, table, coded_arrays, *,
              config: WgmmaConfig, blocksize: int, slab: bool,
              coded_fmt: WeightFormat | None) -> jax.Array:
  coded = coded_fmt is not None
  mp, k = x_log.shape
  count = len(words)  # weights in the launch
  n = sum(w.shape[0] for w in words)
  tile_k, split, sub, steps = config.tile_k, config.split_k, config.sub, config.steps
  tile_n = ROWS * sub
  starts = np.cumsum([0] + [w.shape[0] // tile_n for w in words]).tolist()  # first row tile
  nblk = tile_k // BLOCK
  k_iters = k // (split * tile_k)
  cols = k // split // blocksize  # slab columns per CTA
  reduce = config.reduce and split > 1
  late = slab and late_slab_applies(coded_fmt, config)
  out_t = config.transpose_out
  out_shape = (mp, n) if out_t else (n, mp)
  x_swizzle = plgpu.find_swizzle(tile_k * 16, "rhs")
  # post_scale: unscaled blocks, each block's float32 sum times its rows' scale column
  post = config.post_scale and blocksize >= BLOCK
  if post:
    decode_blocks = decode_lib.weight_decoder(tile_k, x_log.dtype, scaled=False)
    scale_column = [decode_lib.slab_scale_column(t * ROWS) for t in range(sub)] if slab else []
  elif slab:  # one decoder per row tile: each reads its own rows of the slab
    slab_decode = [decode_lib.weight_decoder(tile_k, x_log.dtype, t * ROWS, blocksize)
                   for t in range(sub)]
  else:
    decode = decode_lib.weight_decoder(tile_k, x_log.dtype)
  extra: tuple[jax.Array, ...] = ()
  decode_slab: list[Any] = [None] * count
  if coded_fmt is not None:
    assert slab, "coded scales are decoded into the slab"
    scale_tables, group_scales, offsets = coded_arrays
    extra = tuple(a for per_weight in zip(scale_tables, group_scales, offsets)
                  for a in per_weight)
    decode_slab = [decode_lib.scale_slab_decoder(tile_n, cols, s.shape[1], coded_fmt,
                                                 g.shape[0])
                   for s, g in zip(scales, group_scales)]
  rows_of = lambda t: pl.ds(t * ROWS, ROWS)

  def body(ni, no, ks, ins, decode_scales, o_gmem, o_smem, *slab_refs):
    # ni: the CTA's row tile in its weight; no: in the output (the group's rows)
    x_gmem, w_gmem, s_gmem, t_gmem, *extra_refs = ins
    tab = decode_lib.load(t_gmem, plgpu.Layout.WG_STRIDED((128,), vec_size=1))
    s_slab: Any = slab_refs[0] if slab else None

    def slab_ready():  # the float32 slab may be read once this returns
      if not coded:
        plgpu.barrier_wait(slab_refs[1])
      else:  # this CTA's scales, decoded from their byte codes once
        decode_scales(s_gmem, *extra_refs, s_slab, ni * tile_n, ks * cols)

    if slab and not coded:  # this CTA's [tile_n, cols] of the stored [N, K / blocksize]
      plgpu.copy_gmem_to_smem(
          s_gmem.at[pl.ds(ni * tile_n, tile_n), pl.ds(ks * cols, cols)], s_slab, slab_refs[1])
    if slab and not late:
      slab_ready()

    def accumulate(*accs):
      def step(idx, x_smem, w_smem, *s_step):
        if late:  # the slab is waited for (or decoded) while the first copies are in flight
          pl.when(idx[0] == 0)(slab_ready)

        xt = x_smem.transpose((1, 0))
        for t in range(sub):  # decode tile t while the wgmma of tile t - 1 runs
          w = decode_lib.load(w_smem.at[rows_of(t)], plgpu.Layout.WGMMA)
          if slab:
            first = idx[0] * tile_k
            a = slab_decode[t](w, tab, s_slab, *((first + b * BLOCK) // blocksize
                                                for b in range(nblk)))
          else:
            a = decode(w, tab, *(decode_lib.load(s_step[0].at[b, rows_of(t)],
                                                 plgpu.Layout.WGMMA.reduce(1))
                                 for b in range(nblk)))
          plgpu.wgmma(accs[t], a, xt)
        plgpu.wgmma_wait(0)

      specs = [
          plgpu.BlockSpec((mp, tile_k), lambda kk: (0, ks * k_iters + kk),
                          transforms=(plgpu.TilingTransform((8, x_swizzle // 2)),
                                      plgpu.SwizzleTransform(x_swizzle))),
          plgpu.BlockSpec((tile_n, tile_k // 8), lambda kk: (ni, ks * k_iters + kk)),
      ]
      operands = [x_gmem, w_gmem]
      if not slab:
        specs.append(plgpu.BlockSpec((nblk, tile_n), lambda kk: (ks * k_iters + kk, ni)))
        operands.append(s_gmem)
      if post:  # the running sums are the pipeline's carry (registers), not accumulators
        zero = plgpu.layout_cast(jnp.zeros((ROWS, mp), jnp.float32), plgpu.Layout.WGMMA)
        return plgpu.emit_pipeline(post_step, grid=(k_iters,), in_specs=specs,
                                   max_concurrent_steps=steps,
                                   init_carry=tuple(zero for _ in range(sub)))(*operands)
      plgpu.emit_pipeline(step, grid=(k_iters,), in_specs=specs,
                          max_concurrent_steps=steps)(*operands)
      return tuple(acc[...] for acc in accs)

    def post_step(idx, x_smem, w_smem, *rest):
      *s_step, totals = rest
      if late:
        pl.when(idx[0] == 0)(slab_ready)

      def block_sums(*parts):  # fresh zeroed accumulators: one per row tile and block
        for t in range(sub):
          w = decode_lib.load(w_smem.at[rows_of(t)], plgpu.Layout.WGMMA)
          for b, a in enumerate(decode_blocks(w, tab)):
            xb = x_smem.at[:, pl.ds(b * BLOCK, BLOCK)].transpose((1, 0))
            plgpu.wgmma(parts[t * nblk + b], a, xb)
        plgpu.wgmma_wait(0)
        return tuple(part[...] for part in parts)

      sums = pl.run_scoped(block_sums, *(plgpu.ACC((ROWS, mp)) for _ in range(sub * nblk)))
      out = []
      for t in range(sub):
        total = totals[t]
        for b in range(nblk):
          if slab:
            scale = scale_column[t](s_slab, (idx[0] * tile_k + b * BLOCK) // blocksize)
          else:
            scale = decode_lib.load(s_step[0].at[b, rows_of(t)], plgpu.Layout.WGMMA.reduce(1))
          total = total + sums[t * nblk + b] * jax.lax.broadcast_in_dim(scale, (ROWS, mp), (0,))
        out.append(total)
      return tuple(out)

    if post:
      accs = accumulate()
    else:
      accs = pl.run_scoped(accumulate, *(plgpu.ACC((ROWS, mp)) for _ in range(sub)))
    for t, acc in enumerate(accs):
      if out_t:  # [mp, tile_n]: the accumulator's transposed layout (a shuffle per pair)
        o_smem.at[:, rows_of(t)].transpose((1, 0))[...] = plgpu.layout_cast(
            acc, plgpu.Layout.WGMMA_TRANSPOSED)
      else:
        o_smem[rows_of(t)] = acc
    plgpu.commit_smem()
    out_rows = (slice(None), pl.ds(no * tile_n, tile_n)) if out_t else \
        (pl.ds(no * tile_n, tile_n),)
    if reduce:  # add this CTA's partial tile into the zeroed output (in L2, atomically)
      plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[out_rows], reduction_op="add")
    else:
      plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[(ks, *out_rows)])
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  def run(ins, o_gmem, *scr):  # the CTA's weight: static row-tile ranges, one branch each
    x_gmem, t_gmem = ins[0], ins[1 + 2 * count]
    ni, ks = jax.lax.axis_index("n"), jax.lax.axis_index("k")
    for g in range(count):
      own = (ins[1 + g], ins[1 + count + g])
      weight_ins = (x_gmem, *own, t_gmem, *ins[2 + 2 * count + 3 * g:5 + 2 * count + 3 * g])
      local = ni - starts[g] if starts[g] else ni
      go = functools.partial(body, local, ni, ks, weight_ins, decode_slab[g], o_gmem, *scr)
      if count == 1:
        go()
      else:
        pl.when(jnp.logical_and(ni >= starts[g], ni < starts[g + 1]))(go)

  scratch: list[Any] = [plgpu.SMEM((mp, tile_n) if out_t else (tile_n, mp), jnp.float32)]
  if slab:
    scratch.append(plgpu.SMEM((tile_n, cols), jnp.float32))
    if not coded:
      scratch.append(plgpu.Barrier(num_arrivals=1))
  operands = (x_log, *words, *scales, table, *extra)
  n_in = len(operands)
  if not reduce:
    def kernel(*refs):
      run(refs[:n_in], *refs[n_in:])

    call = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((split, *out_shape), jnp.float32),
        grid=(n // tile_n, split),
        grid_names=("n", "k"),
        scratch_types=scratch,
    )
    return call(*operands)

  # The add-reduction needs a zeroed output. plgpu.kernel takes no aliases, and JAX 0.11.2
  # did not lower a Mosaic GPU pl.pallas_call (H100, run 5; 0.10 deprecates it), so the
  # output is a mutable Ref that starts as zeros (pl.run_state) and the kernel (pl.kernel on
  # a Mosaic GPU mesh) writes into it; the inputs stay plain operands, so nothing else is
  # copied.
  mesh = plgpu.Mesh(grid=(n // tile_n, split), grid_names=("n", "k"))

  def reduce_kernel(*refs):
    ins, o_gmem = refs[:n_in], refs[n_in]
    pl.run_scoped(lambda *scr: run(ins, o_gmem, *scr), *scratch)

  def into_zeros(o_ref):
    pl.kernel(reduce_kernel, out_type=(), mesh=mesh,
              compiler_params=plgpu.CompilerParams(), name="wgmma_4bit_reduce")(*operands, o_ref)

  return pl.run_state(into_zeros)(jnp.zeros(out_shape, jnp.float32))[None]


def wgmma_4bit(x: jax.Array, w: PackedWeight, *, fmt: WeightFormat, config: WgmmaConfig,
               bias: jax.Array | None = None) -> jax.Array:
  """``x @ W.T + bias`` in ``x.dtype`` (``supports(N, K, fmt, x.dtype)`` must hold)."""
  return wgmma_4bit_group(x, [w], fmt=fmt, configs=[config], biases=[bias])[0]


def wgmma_4bit_group(x: jax.Array, ws: Sequence[PackedWeight], *, fmt: WeightFormat,
                     configs: WgmmaConfig | Sequence[WgmmaConfig],
                     biases: Sequence[jax.Array | None]) -> tuple[jax.Array, ...]:
  """``x @ W_i.T + bias_i`` for weights that share ``x`` (q/k/v, gate/up), the activations
  padded and permuted once for all of them (not permuted for ``fmt.layout == "wgmma"``):
  one launch per weight with a sequence of ``configs``, or one launch for the whole group
  with a single config (:func:`fit_group`: each CTA finds its weight by its row tile)."""
  m, k = x.shape
  mp = -(-m // 8) * 8  # wgmma's narrow dimension is a multiple of 8
  x_pad = jnp.pad(x, ((0, mp - m), (0, 0))) if mp != m else x
  # A weight stored in the decoder's own K order (layout "wgmma") takes x as it is.
  x_log = x_pad if fmt.layout == "wgmma" else permute_activations(x_pad)
  table = jnp.asarray(np.tile(np.asarray(fmt.lut, np.float32), 8))
  if isinstance(configs, WgmmaConfig):
    ns = [w.shape[0] for w in ws]
    config = small_block_config(fit_group(configs, mp, ns, k), fmt, mp, k)
    part = _scaled_partials(x_log, list(ws), table, fmt, config, mp, k).sum(axis=0)
    accs = [_rows_first(a, m, config) for a in
            jnp.split(part, np.cumsum(ns)[:-1].tolist(), axis=1 if config.transpose_out else 0)]
  else:
    accs = []
    for w, config in zip(ws, configs, strict=True):
      config = small_block_config(fit(config, mp, w.shape[0], k), fmt, mp, k)
      part = _scaled_partials(x_log, [w], table, fmt, config, mp, k).sum(axis=0)
      accs.append(_rows_first(part, m, config))
  outs = []
  for acc, bias in zip(accs, biases, strict=True):
    if bias is not None:
      acc = acc + bias.astype(jnp.float32)[None, :]
    outs.append(acc.astype(x.dtype))
  return tuple(outs)


def _rows_first(acc: jax.Array, m: int, config: WgmmaConfig) -> jax.Array:
  """The summed output's first ``m`` rows of x as ``[m, N]``: as the kernel wrote it with
  ``transpose_out``, else transposed by XLA (a kernel of its own where it cannot fuse the
  transpose into what follows)."""
  return acc[:m] if config.transpose_out else acc[:, :m].T


def _scaled_partials(x_log: jax.Array, ws: list[PackedWeight], table: jax.Array,
                     fmt: WeightFormat, config: WgmmaConfig, mp: int, k: int) -> jax.Array:
  """The partial sums of one launch (:func:`_partials`) over ``ws``, with the scale path the
  config and the format allow: byte codes decoded in the kernel, a float32 slab, or
  ``[K/64, N]`` scales."""
  words = [w.words(jnp.int32) for w in ws]
  if coded_slab_ok(fmt, mp, k, config):  # the kernel decodes the byte codes
    tables, groups, offsets = [], [], []
    for w in ws:
      assert w.scale_table is not None
      # Each its own operand: appending the offset to the table was an XLA kernel per
      # product (run 7's decode profile).
      offset, group = jnp.zeros((1,), jnp.float32), jnp.ones((1,), jnp.float32)
      if fmt.nested_blocksize:
        assert w.offset is not None and w.group_scales is not None
        offset, group = w.offset[:1].astype(jnp.float32), w.group_scales
      tables.append(w.scale_table.astype(jnp.float32))
      groups.append(group)
      offsets.append(offset)
    return wgmma_partials(x_log, words, [w.scales for w in ws], table, config=config,
                          blocksize=fmt.blocksize, slab=True,
                          coded=(fmt, tables, groups, offsets))
  if config.slab and slab_ok(fmt, mp, k, config):
    return wgmma_partials(x_log, words, [stored_scales(w, fmt) for w in ws], table,
                          config=config, blocksize=fmt.blocksize, slab=True)
  return wgmma_partials(x_log, words, [kernel_scales(w, fmt) for w in ws], table,
                        config=config)
