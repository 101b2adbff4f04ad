"""What the Mosaic GPU tensor-core kernel (:mod:`wgmma`) takes, and its inputs made by XLA.

:class:`WgmmaConfig` and :func:`fit` (launch parameters fitted to a shape and to shared
memory), :func:`supports`, :func:`slab_ok` and :func:`coded_slab_ok` (which shapes, formats
and scale paths the kernel takes), and :func:`stored_scales` / :func:`kernel_scales` (the
float32 scales in the two orders the kernel reads). No Mosaic GPU imports: this module also
serves device kinds and machines without it (the dispatch, the CPU tests, the sweep tool).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pallas_kernels._src.lut_matmul.wgmma_layout import BLOCK, ROWS
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, combine_scales


@dataclasses.dataclass(frozen=True, kw_only=True)
class WgmmaConfig:
  """Launch parameters of the Mosaic GPU kernel.

  Example:
    >>> from pallas_kernels import WgmmaConfig
    >>> from pallas_kernels._src.lut_matmul.wgmma import fit
    >>> fit(WgmmaConfig(sub=2), 16, 4096, 4096).name()  # 16 rows of x, W[4096, 4096]
    'wgmma,k128,s8,r2,p4'

  Attributes:
    tile_k: weights of K per pipeline step (64, 128 or 256).
    split_k: CTAs per output tile along K (0: enough CTAs to fill the GPU).
    sub: row tiles of 64 per CTA (they share the activations' tile).
    steps: pipeline depth (TMA copies in flight per CTA).
    slab: read float32 scales as stored (``[N, K/blocksize]``): each CTA copies its rows'
      scales for its K range into shared memory once, instead of XLA transposing them
      to ``[K/64, N]`` before every product (unnested formats without a multiplier).
    coded_slab: byte-coded (and double-quantized) scales reach the kernel as stored (one
      byte per block); each CTA decodes its slab into float32 once, before its pipeline
      starts (with ``late_slab``, in its first step, except double-quantized codes:
      :func:`late_slab_applies`), instead of XLA decoding every scale before every
      product. Applies where the slab fits (:func:`coded_slab_ok`), whether or not
      ``slab`` is set; float scales ignore it.
    late_slab: with a slab, the CTA waits for its scales' copy (or decodes their codes)
      inside the first pipeline step, after the pipeline has issued its first ``steps``
      copies, instead of before the pipeline starts: the slab's latency overlaps the
      first weight tiles' (run 5 measured the slab 2 us slower than per-step scales at
      M = 16 on 8192 x 8192, a cost paid before every CTA's first copy). Ignored for
      double-quantized codes (:func:`late_slab_applies`).
    reduce: with ``split_k > 1``, each CTA adds its partial tile into one float32 output
      with a TMA add-reduction (``cp.reduce.async.bulk``, done in L2) instead of writing
      ``split_k`` partial tiles that XLA sums afterwards (a write and a read of
      ``split_k * N * M`` floats, and a launch).
    transpose_out: the kernel writes its output as ``[M, N]`` (the accumulator cast to
      Mosaic's transposed WGMMA layout, stored through a transposed shared-memory view)
      instead of ``[N, M]``, which XLA then transposes, often as a kernel of its own (run 7
      profiled 64 such transposes in a Llama-8B decode step at batch 16).
    post_scale: decode each weight to its table value rounded to the activations' type
      (no scale), run one ``wgmma`` per 64-weight block into a fresh accumulator, and
      multiply that block's float32 partial sum by its row's scale (one multiply-add per
      output element and block, instead of one multiply per weight: ncu counted the scale
      multiply as 1.0 of 5.6 instructions per weight at M = 16, run 6). The contract
      becomes the Triton kernels' ``decode="prmt"`` one: ``table`` rounded to the 16-bit
      type, the scale applied to each block's float32 sum. Scale blocks of 64 weights and
      more only (smaller blocks differ within a thread's 64; they ignore it).
  """

  tile_k: int = 128
  split_k: int = 0
  sub: int = 1
  steps: int = 4
  slab: bool = False
  coded_slab: bool = False
  late_slab: bool = False
  reduce: bool = False
  transpose_out: bool = False
  post_scale: bool = False

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
            + (",slab" if self.slab else "") + (",coded" if self.coded_slab else "")
            + (",late" if self.late_slab else "")
            + (",red" if self.reduce else "") + (",outT" if self.transpose_out else "")
            + (",post" if self.post_scale else ""))


def supports(n: int, k: int, fmt: WeightFormat, dtype) -> bool:
  """Shapes and formats the kernel takes: whole 64-row tiles, K a multiple of 64, scale
  blocks of 16 or more weights and 16-bit activations. Blocks of 16 and 32 (NVFP4, MXFP4)
  are read from a slab only (:func:`small_block_config`)."""
  return (n > 0 and n % ROWS == 0 and k > 0 and k % BLOCK == 0 and fmt.blocksize >= 16
          and k % fmt.blocksize == 0 and jnp.dtype(dtype).name in ("bfloat16", "float16"))


def small_block_config(config: WgmmaConfig, fmt: WeightFormat, m: int,
                       k: int) -> WgmmaConfig:
  """``config`` (already :func:`fit`) as it runs for ``fmt``. Blocks smaller than 64
  weights have no ``[K/64, N]`` scale order, so they take the slab (each thread reads its
  own block's scale from shared memory, ``wgmma_layout.slab_column``), with ``split_k``
  raised where a CTA's scale row would not fit a TMA box or shared memory."""
  if fmt.blocksize >= BLOCK:
    return config
  c = dataclasses.replace(config, slab=True)
  steps = k // c.tile_k
  while not slab_ok(fmt, m, k, c):
    split = next((s for s in range(c.split_k + 1, steps + 1) if steps % s == 0), None)
    if split is None:
      raise ValueError(f"No split of K={k} gives blocks of {fmt.blocksize} a scale slab "
                       f"that fits; use a blocksize of 64 or more, or the dequantize route.")
    c = dataclasses.replace(c, split_k=split)
  return c


def stored_scales(w: PackedWeight, fmt: WeightFormat) -> jax.Array:
  """float32 scale per row and block, in the stored ``[N, K/blocksize]`` order: the stored
  scales themselves when they are plain float32, else decoded by XLA (one elementwise
  pass with small-table gathers, no transpose)."""
  n, nkb = w.scales.shape
  if fmt.scale_kind == "float":
    if fmt.scale_multiplier == 1.0:
      return w.scales.astype(jnp.float32)
    return combine_scales(w.scales, None, None, fmt)
  assert w.scale_table is not None  # check_weight: byte scales come with their table
  base = w.scale_table[w.scales.astype(jnp.int32)]
  group = offset = None
  if fmt.nested_blocksize:
    assert w.group_scales is not None and w.offset is not None
    blocks = jnp.arange(n * nkb, dtype=jnp.int32).reshape(n, nkb)
    group = w.group_scales[jnp.minimum(blocks // fmt.nested_blocksize,
                                       w.group_scales.shape[0] - 1)]
    offset = w.offset[0]
  return combine_scales(base, group, offset, fmt)


def kernel_scales(w: PackedWeight, fmt: WeightFormat) -> jax.Array:
  """float32 scale per row and 64 weights, as ``[K/64, N]``."""
  if fmt.blocksize < BLOCK:
    raise ValueError(f"Blocks of {fmt.blocksize} weights have no [K/64, N] scale order; "
                     f"the kernel reads them from the slab (small_block_config).")
  s = stored_scales(w, fmt)
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


def fit_group(config: WgmmaConfig, m: int, ns: Sequence[int], k: int) -> WgmmaConfig:
  """:func:`fit` for one launch over weights of ``ns`` rows that share K: fitted to the
  summed rows, with ``sub`` row tiles that divide every weight's rows (a CTA's tiles belong
  to one weight)."""
  c = fit(config, m, sum(ns), k)
  sub = c.sub
  while any((n // ROWS) % sub for n in ns):
    sub //= 2
  return c if sub == c.sub else fit(dataclasses.replace(config, sub=sub), m, sum(ns), k)


SMEM_LIMIT = 232448 - 2048  # an H100's shared memory per block, less the pipeline's barriers


def smem_bytes(m: int, tile_k: int, sub: int, steps: int) -> int:
  """Shared memory of one CTA: ``steps`` buffers of activations, words and scales, and
  the float32 output tile."""
  tile_n = ROWS * sub
  per_step = m * tile_k * 2 + tile_n * tile_k // 2 + (tile_k // BLOCK) * tile_n * 4
  return steps * per_step + tile_n * m * 4


CODED_PER_THREAD = 16  # scale codes per thread of the in-kernel slab decode, at most
# With late_slab the decode runs while the pipeline's first copies are in flight, so a
# longer one may still pay; not measured yet (docs/benchmarks.md, run 6): this limit only
# applies where a recorded config asks for late_slab.
CODED_PER_THREAD_LATE = 64


def late_slab_applies(fmt: WeightFormat | None, config: WgmmaConfig) -> bool:
  """Whether ``config.late_slab`` moves the slab's wait (or its decode) into the first
  pipeline step for scales of ``fmt`` (None: float32 scales). Not for double-quantized
  codes (``fmt.nested_blocksize``): their decode inside the first step was slower than
  before the pipeline (or XLA's, past :data:`CODED_PER_THREAD`) in 20 of 25 M = 16 (shape,
  split-K) pairs on an H100 (run 10, NF4+DQ; 28672 x 4096 with split-K 8: 59.0 against
  47.3 us), while float32 slabs gained from it in 17 of 25 (46.1 against 49.2 us)."""
  return config.late_slab and not (fmt is not None and fmt.nested_blocksize > 0)


def coded_slab_ok(fmt: WeightFormat, m: int, k: int, config: WgmmaConfig) -> bool:
  """The kernel decodes the byte-coded scales itself (``config.coded_slab``): the slab
  fits (:func:`slab_ok`), its ``tile_n * cols`` entries split evenly over 128 threads, and
  at most :data:`CODED_PER_THREAD` of them fall to each thread. The decode runs before the
  CTA's pipeline starts, so a long one delays every CTA: on an H100 (run 5, 8192 x 8192
  NF4 + DQ) 8 per thread (M = 16, split-K 8) ran within 2% of float32 scales, 64 per
  thread (M = 128, no split) 23% slower, where XLA's decode pass had cost 7%. Where
  ``late_slab`` applies (:func:`late_slab_applies`) the decode overlaps the first copies
  and the limit is :data:`CODED_PER_THREAD_LATE`."""
  cols = k // config.split_k // fmt.blocksize
  entries = ROWS * config.sub * cols
  limit = CODED_PER_THREAD_LATE if late_slab_applies(fmt, config) else CODED_PER_THREAD
  return (config.coded_slab and fmt.scale_kind == "byte" and slab_ok(fmt, m, k, config)
          and entries % 128 == 0 and entries // 128 <= limit)


def slab_ok(fmt: WeightFormat, m: int, k: int, config: WgmmaConfig) -> bool:
  """The scales can be read as a slab of :func:`stored_scales`: a CTA's scale row
  (``K / split_k / blocksize`` floats) is a whole TMA box (16-byte multiple, <= 256) and
  the slab fits in shared memory beside the pipeline. Any scale encoding qualifies: XLA
  decodes byte-coded and nested scales in the stored order, without the transpose."""
  cols = k // config.split_k // fmt.blocksize
  slab_bytes = ROWS * config.sub * cols * 4
  return ((cols * 4) % 16 == 0 and 0 < cols <= 256
          and smem_bytes(m, config.tile_k, config.sub, config.steps) + slab_bytes <= SMEM_LIMIT)

