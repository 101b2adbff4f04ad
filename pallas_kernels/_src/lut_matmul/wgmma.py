"""Hopper tensor-core product ``W · xᵀ`` through Pallas Mosaic GPU: TMA-fed, register-table decode.

Same contract as the Triton ``"mma"`` kernel (``lut_matmul_reference(kind="mma")``):
the weight is decoded to the exact float32 ``table[nibble] * scale``, rounded once to
the activations' 16-bit type and multiplied on the tensor cores with float32
accumulation. What differs is the machinery, which is what the Triton kernel lacked
(docs/benchmarks.md, "Decode step"): ``plgpu.emit_pipeline`` keeps ``steps`` TMA copies
of the weight words, the scales and the activations in flight per CTA, and each CTA
decodes ``sub`` row tiles of 64 in turn, so the decode of one overlaps the
asynchronous ``wgmma`` of the one before.

The decode lives in registers, in Mosaic's WGMMA operand layout (``plgpu.inline_mgpu``):
the packed bytes are viewed as int32 words ``[N, K/8]`` and loaded in the WGMMA
layout, so each thread holds, for each of its rows, the 8 codes of a word; one warp
shuffle per code reads the float32 table value from the lane that holds it (the 16
entries sit in the lanes of each half-warp), one multiply applies the block scale and
``cvt.rn.bf16x2`` packs two weights. The codes land in the operand's registers in
word order, not in the weight's K order: within each 64-weight block, real index
``k`` sits at logical index ``PERMUTATION[k]`` (bitsandbytes' high-nibble-first bytes,
little-endian words, WGMMA's column pairs). The activations are permuted the same
way once per product (a gather XLA fuses into the copy it makes anyway), so the
product is unchanged. :func:`derive_permutation` recomputes the permutation from
Mosaic's own layout description; a test holds the two equal.

Needs JAX's Mosaic GPU backend and an sm_90 GPU; :func:`available` says whether this
process has both. Scales are float32 per 64 weights, in ``[K/64, N]`` order (a TMA
box needs 16 bytes along its minor dimension): :func:`kernel_scales` makes them,
double quantization and byte-coded scales decoded by XLA on the way.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._src import common
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, combine_scales

try:  # Mosaic GPU ships with jaxlib; its Python side changes between JAX releases.
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import mosaic_gpu as plgpu
  from jax.experimental.mosaic.gpu import fragmented_array as fa
  from jax.experimental.mosaic.gpu import utils as mgpu_utils
  from jax._src.lib.mlir import ir
  from jax._src.lib.mlir.dialects import arith, llvm, vector
  _IMPORTED = True
except ImportError:  # pragma: no cover - depends on the installed jaxlib
  _IMPORTED = False

BLOCK = 64  # weights per scale inside the kernel (a bnb block of 64, or a part of a larger one)
ROWS = 64   # rows of W per warpgroup MMA
# Real K index -> logical K index within a 64-weight block (see the module docstring).
PERMUTATION = np.array([
    1, 0, 9, 8, 17, 16, 25, 24, 33, 32, 41, 40, 49, 48, 57, 56,
    3, 2, 11, 10, 19, 18, 27, 26, 35, 34, 43, 42, 51, 50, 59, 58,
    5, 4, 13, 12, 21, 20, 29, 28, 37, 36, 45, 44, 53, 52, 61, 60,
    7, 6, 15, 14, 23, 22, 31, 30, 39, 38, 47, 46, 55, 54, 63, 62])
_GATHER = np.argsort(PERMUTATION)  # x_logical[..., j] = x[..., _GATHER[j]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class WgmmaConfig:
  """Launch parameters of the Mosaic GPU kernel.

  Attributes:
    tile_k: weights of K per pipeline step (64, 128 or 256).
    split_k: CTAs per output tile along K (0: enough CTAs to fill the GPU).
    sub: row tiles of 64 per CTA (they share the activations' tile).
    steps: pipeline depth (TMA copies in flight per CTA).
    overlap: leave the last wgmma of a step running into the next step's decode
      (``wgmma_wait(1)``; the activations' buffer is then released a step later).
  """

  tile_k: int = 128
  split_k: int = 0
  sub: int = 1
  steps: int = 4
  overlap: bool = False

  def __post_init__(self):
    if self.tile_k not in (64, 128, 256):
      raise ValueError(f"`tile_k` must be 64, 128 or 256, got {self.tile_k}.")
    for name in ("sub", "steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
    if self.split_k < 0:
      raise ValueError(f"`split_k` must be >= 0 (0: automatic), got {self.split_k}.")

  def name(self) -> str:
    return (f"wgmma,k{self.tile_k},s{self.split_k},r{self.sub},p{self.steps}"
            + (",ov" if self.overlap else ""))


def available() -> bool:
  """Mosaic GPU imports and the default device is an sm_90 (Hopper) GPU."""
  if not (_IMPORTED and common.on_gpu()):
    return False
  return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9.")


def supports(n: int, k: int, fmt: WeightFormat, dtype) -> bool:
  """Shapes and formats the kernel takes: whole 64-row tiles, whole 64-weight scale
  blocks (blocksize >= 64) and 16-bit activations."""
  return (n > 0 and n % ROWS == 0 and k > 0 and k % BLOCK == 0
          and fmt.blocksize % BLOCK == 0 and jnp.dtype(dtype).name in ("bfloat16", "float16"))


def permute_activations(x: jax.Array) -> jax.Array:
  """``x[..., K]`` in the decoder's K order (``x_out[..., PERMUTATION[k]] = x[..., k]``)."""
  *lead, k = x.shape
  blocks = x.reshape(*lead, k // BLOCK, BLOCK)
  return jnp.take(blocks, jnp.asarray(_GATHER, jnp.int32), axis=-1).reshape(*lead, k)


def kernel_scales(w: PackedWeight, fmt: WeightFormat) -> jax.Array:
  """float32 scale per row and 64 weights, as ``[K/64, N]``."""
  n, nkb = w.scales.shape
  if fmt.scale_kind == "float":
    s = combine_scales(w.scales, None, None, fmt)
  else:
    base = w.scale_table[w.scales.astype(jnp.int32)]
    group = offset = None
    if fmt.nested_blocksize:
      blocks = jnp.arange(n * nkb, dtype=jnp.int32).reshape(n, nkb)
      group = w.group_scales[jnp.minimum(blocks // fmt.nested_blocksize,
                                         w.group_scales.shape[0] - 1)]
      offset = w.offset[0]
    s = combine_scales(base, group, offset, fmt)
  s = jnp.repeat(s, fmt.blocksize // BLOCK, axis=1) if fmt.blocksize > BLOCK else s
  return s.T


def fit(config: WgmmaConfig, m: int, n: int, k: int) -> WgmmaConfig:
  """``config`` adjusted to the shape: dividing tiles, and ``split_k`` from the CTA count
  the measurements favoured (docs/benchmarks.md): about 8 per SM at M <= 32, 2 at M <= 64,
  1 above (the activation tile grows with M)."""
  tile_k = config.tile_k
  while k % tile_k:
    tile_k //= 2
  sub = config.sub
  while (n // ROWS) % sub:
    sub //= 2
  depth = config.steps
  while smem_bytes(m, tile_k, sub, depth) > SMEM_LIMIT:  # shallower, then narrower
    if depth > 2:
      depth -= 1
    elif tile_k > BLOCK:
      tile_k //= 2
    elif sub > 1:
      sub //= 2
    else:
      break
  steps = k // tile_k
  split = config.split_k
  if split == 0:
    target = 1024 if m <= 32 else 264 if m <= 64 else 132
    split = max(1, min(8, target // max(1, n // (ROWS * sub))))
  split = max(1, min(split, steps))
  while steps % split:
    split -= 1
  return dataclasses.replace(config, tile_k=tile_k, sub=sub, split_k=split, steps=depth)


SMEM_LIMIT = 232448 - 2048  # an H100's shared memory per block, less the pipeline's barriers


def smem_bytes(m: int, tile_k: int, sub: int, steps: int) -> int:
  """Shared memory of one CTA: ``steps`` buffers of activations, words and scales, and
  the float32 output tile."""
  tile_n = ROWS * sub
  per_step = m * tile_k * 2 + tile_n * tile_k // 2 + (tile_k // BLOCK) * tile_n * 4
  return steps * per_step + tile_n * m * 4


def _load(ref, layout):
  # JAX 0.10 requires plgpu.load's index argument; JAX 0.11 deprecates it.
  if inspect.signature(plgpu.load).parameters["idx"].default is inspect.Parameter.empty:
    return plgpu.load(ref, None, layout=layout, optimized=False)
  return plgpu.load(ref, layout=layout, optimized=False)


def _decoder(tile_k: int, dtype):
  """``decode(words, table, *scales)``: int32 ``[64, tile_k/8]`` words (WGMMA layout), the
  table (lane ``t`` holds entry ``t % 16``) and one ``[64]`` scale column per 64 weights ->
  the ``[64, tile_k]`` operand in ``dtype``, WGMMA layout, logical K order."""
  nblk = tile_k // BLOCK
  cvt = "cvt.rn.bf16x2.f32" if jnp.dtype(dtype) == jnp.bfloat16 else "cvt.rn.f16x2.f32"

  @plgpu.inline_mgpu(
      arg_types=(plgpu.Layout.WGMMA, plgpu.Layout.WG_STRIDED((128,), vec_size=1))
      + tuple(plgpu.Layout.WGMMA.reduce(1) for _ in range(nblk)),
      return_type=plgpu.ShapeDtypeStruct((ROWS, tile_k), dtype, layout=plgpu.Layout.WGMMA),
  )
  def decode(ctx, words, table, *scales):
    del ctx
    i32, f32 = ir.IntegerType.get_signless(32), ir.F32Type.get()
    half = ir.BF16Type.get() if jnp.dtype(dtype) == jnp.bfloat16 else ir.F16Type.get()
    pick = lambda v, i: vector.extract(v, dynamic_position=[],
                                       static_position=ir.DenseI64ArrayAttr.get([i]))
    tab = pick(table.registers.flat[0], 0)
    out = np.empty(fa.WGMMA_LAYOUT.registers_shape((ROWS, tile_k)), dtype=object)
    # Word registers: index (0, j, 0, 0, h, ...) holds words 8j + 2(lane % 4) + {0, 1} of
    # row h * 8 + lane / 4 (of the warp's 16); the operand's registers (0, g, 0, 0, h, ...)
    # hold its columns 8g + 2(lane % 4) + {0, 1}.
    for idx in np.ndindex(words.registers.shape):
      j, h = idx[1], idx[4]
      scale = pick(scales[j].registers[(0, 0, h, 0, 0)], 0)
      vals = []
      for w in range(2):
        word = pick(words.registers[idx], w)
        for p in range(8):
          # shfl.idx reads bits 0-3 of the lane operand (segment mask 0x10): no masking.
          code = word if p == 0 else arith.shrui(word, arith.constant(i32, 4 * p))
          v = llvm.inline_asm(f32, [tab, code],
                              "shfl.sync.idx.b32 $0, $1, $2, 0x101f, 0xffffffff;", "=f,f,r")
          vals.append(arith.mulf(v, scale))
      for q in range(8):
        pair = llvm.inline_asm(i32, [vals[2 * q + 1], vals[2 * q]], f"{cvt} $0, $1, $2;",
                               "=r,f,f")
        reg = list(idx)
        reg[1] = 8 * j + q  # code e = 8 * (2j + w) + p sits in operand register e // 2
        out[tuple(reg)] = mgpu_utils.bitcast(pair, ir.VectorType.get((2,), half))
    return fa.FragmentedArray(_registers=out, _layout=fa.WGMMA_LAYOUT, _is_signed=None)

  return decode


def wgmma_partials(x_log: jax.Array, words: jax.Array, scales_t: jax.Array, table: jax.Array,
                   *, config: WgmmaConfig) -> jax.Array:
  """float32 ``[split_k, N, Mp]`` partial sums of ``W · x_logᵀ``.

  ``x_log``: ``[Mp, K]`` 16-bit activations in the decoder's K order, ``Mp % 8 == 0``;
  ``words``: int32 ``[N, K/8]``; ``scales_t``: float32 ``[K/64, N]``; ``table``: float32
  ``[128]`` (entry ``t % 16`` at ``t``); ``config`` already :func:`fit` to the shape.
  """
  mp, k = x_log.shape
  n = words.shape[0]
  tile_k, split, sub, steps = config.tile_k, config.split_k, config.sub, config.steps
  tile_n = ROWS * sub
  nblk = tile_k // BLOCK
  k_iters = k // (split * tile_k)
  x_swizzle = plgpu.find_swizzle(tile_k * 16, "rhs")
  decode = _decoder(tile_k, x_log.dtype)

  def kernel(x_gmem, w_gmem, s_gmem, t_gmem, o_gmem, o_smem):
    ni, ks = jax.lax.axis_index("n"), jax.lax.axis_index("k")
    tab = _load(t_gmem, plgpu.Layout.WG_STRIDED((128,), vec_size=1))

    def accumulate(*accs):
      def step(_, x_smem, w_smem, s_smem):
        xt = x_smem.transpose((1, 0))
        for t in range(sub):  # decode tile t while the wgmma of tile t - 1 runs
          rows = pl.ds(t * ROWS, ROWS)
          a = decode(_load(w_smem.at[rows], plgpu.Layout.WGMMA), tab,
                     *(_load(s_smem.at[b, rows], plgpu.Layout.WGMMA.reduce(1))
                       for b in range(nblk)))
          plgpu.wgmma(accs[t], a, xt)
        plgpu.wgmma_wait(1 if config.overlap else 0)

      plgpu.emit_pipeline(
          step,
          grid=(k_iters,),
          in_specs=[
              plgpu.BlockSpec((mp, tile_k), lambda kk: (0, ks * k_iters + kk),
                              transforms=(plgpu.TilingTransform((8, x_swizzle // 2)),
                                          plgpu.SwizzleTransform(x_swizzle)),
                              delay_release=int(config.overlap)),
              plgpu.BlockSpec((tile_n, tile_k // 8), lambda kk: (ni, ks * k_iters + kk)),
              plgpu.BlockSpec((nblk, tile_n), lambda kk: (ks * k_iters + kk, ni)),
          ],
          max_concurrent_steps=steps,
      )(x_gmem, w_gmem, s_gmem)
      if config.overlap:
        plgpu.wgmma_wait(0)
      return tuple(acc[...] for acc in accs)

    accs = pl.run_scoped(accumulate, *(plgpu.ACC((ROWS, mp)) for _ in range(sub)))
    for t, acc in enumerate(accs):
      o_smem[pl.ds(t * ROWS, ROWS)] = acc
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[ks, pl.ds(ni * tile_n, tile_n)])
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  call = plgpu.kernel(
      kernel,
      out_type=jax.ShapeDtypeStruct((split, n, mp), jnp.float32),
      grid=(n // tile_n, split),
      grid_names=("n", "k"),
      scratch_types=dict(o_smem=plgpu.SMEM((tile_n, mp), jnp.float32)),
  )
  return call(x_log, words, scales_t, table)


def wgmma_4bit(x: jax.Array, w: PackedWeight, *, fmt: WeightFormat, config: WgmmaConfig,
               bias: jax.Array | None = None) -> jax.Array:
  """``x @ W.T + bias`` in ``x.dtype`` (``supports(N, K, fmt, x.dtype)`` must hold)."""
  m, k = x.shape
  n = w.shape[0]
  mp = -(-m // 8) * 8  # wgmma's narrow dimension is a multiple of 8
  config = fit(config, mp, n, k)
  words = jax.lax.bitcast_convert_type(w.data.reshape(n, k // 8, 4), jnp.int32)
  x_log = permute_activations(jnp.pad(x, ((0, mp - m), (0, 0))) if mp != m else x)
  table = jnp.asarray(np.tile(np.asarray(fmt.lut, np.float32), 8))
  part = wgmma_partials(x_log, words, kernel_scales(w, fmt), table, config=config)
  acc = part.sum(axis=0)[:, :m].T
  if bias is not None:
    acc = acc + bias.astype(jnp.float32)[None, :]
  return acc.astype(x.dtype)


def derive_permutation() -> np.ndarray:
  """:data:`PERMUTATION` recomputed from Mosaic's WGMMA layout (numpy, no GPU): where each
  code of a thread's words lands among the same thread's operand elements."""
  def positions(layout, shape):
    strides = tuple(mgpu_utils.get_contiguous_strides(shape))
    tile_strides = layout.tiling.tile_strides(strides)
    tiled = layout.tiled_tiling_shape
    dyn = tile_strides[-layout.tiled_tiling_rank:]

    def split(index, dims):
      sizes = [d.times if isinstance(d, fa.Replicated) else tiled[d] for d in dims]
      full = [0] * len(tiled)
      for d, st, sz in zip(dims, mgpu_utils.get_contiguous_strides(tuple(sizes)), sizes):
        if not isinstance(d, fa.Replicated):
          full[d] = (index // st) % sz
      return full

    out = {}
    for thread in range(128):
      base = sum(i * s for i, s in zip(split(thread // 32, layout.warp_dims), dyn)) + \
          sum(i * s for i, s in zip(split(thread % 32, layout.lane_dims), dyn))
      for reg in np.ndindex(layout.registers_shape(shape)):
        lin = base + sum(i * s for i, s in zip(reg, tile_strides))
        out[(thread, reg)] = [np.unravel_index(lin + v * dyn[layout.vector_dim], shape)
                              for v in range(layout.vector_length)]
    return out

  words = positions(fa.WGMMA_LAYOUT, (ROWS, BLOCK // 8))
  elems = positions(fa.WGMMA_LAYOUT, (ROWS, BLOCK))
  perm = -np.ones(BLOCK, np.int64)
  for thread in range(128):
    for row in range(ROWS):
      ws = [e for key in sorted(r for (t, r) in words if t == thread)
            for e in words[(thread, key)] if e[0] == row]
      es = sorted((e for key in (r for (t, r) in elems if t == thread)
                   for e in elems[(thread, key)] if e[0] == row), key=lambda e: e[1])
      for i, (_, col) in enumerate(ws):
        for p in range(8):
          real, logical = 8 * int(col) + (p ^ 1), int(es[8 * i + p][1])
          if perm[real] not in (-1, logical):
            raise AssertionError("the decoder's K order differs between threads")
          perm[real] = logical
  return perm
