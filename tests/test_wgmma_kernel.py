"""The Mosaic GPU tensor-core kernel (``lut_matmul/wgmma.py``) against its contract.

Its contract is the Triton tensor-core kernel's (``lut_matmul_reference(kind="mma")``):
the exact float32 weight rounded once to ``x.dtype``, float32 accumulation. Mosaic GPU
has no interpreter for inline PTX, so the CPU checks what can be checked without the
device: the decoder's K order against Mosaic's own layout description, the activation
permutation, the launch fitting, and that every kernel variant builds (traces and
lowers for CUDA). On an sm_90 GPU the compiled kernel meets the exact product under
the same bound as the other kernels (``check_close``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels._src.lut_matmul import api as lut_api
from pallas_kernels._src.lut_matmul import wgmma, wgmma_layout
from tests.test_lut_kernels import kernel_weight
from tests.test_matmul_kernels import check_close, make_weight

HOPPER = wgmma.available()


def test_decoder_order_is_what_mosaic_layout_gives():
  assert sorted(wgmma_layout.PERMUTATION.tolist()) == list(range(64))
  np.testing.assert_array_equal(wgmma_layout.derive_permutation(), wgmma_layout.PERMUTATION)


def emulate_decode(words: np.ndarray, scales: np.ndarray, table: np.ndarray, dtype,
                   blocksize: int | None = None) -> np.ndarray:
  """The decoder of ``wgmma_decode.weight_decoder`` executed in numpy, thread by thread and register by
  register: the same schedule (``wgmma_layout``), ``shfl.sync.idx`` with segment mask 0x10
  (source lane ``(lane & 0x10) | (b & 0xf)``, PTX ISA), the float32 multiply and ``cvt.rn``'s
  packing (first operand in the high half, i.e. vector element 1). Returns the ``[64, tile_k]``
  operand by logical position; every position must be written exactly once. With
  ``blocksize``, ``scales`` is a slab ``[64, tile_k / blocksize]`` and each thread reads the
  column ``wgmma_layout.slab_column`` gives, as the slab decoder does."""
  from jax.experimental.mosaic.gpu import fragmented_array as fa
  rows, nwords = words.shape
  tile_k = nwords * 8
  word_pos = wgmma_layout.register_positions(fa.WGMMA_LAYOUT, (rows, nwords))
  out_pos = wgmma_layout.register_positions(fa.WGMMA_LAYOUT, (rows, tile_k))
  # The scale columns' layout: plgpu.Layout.WGMMA.reduce(1), as wgmma.py loads them.
  row_pos = wgmma_layout.register_positions(fa.WGMMA_LAYOUT.reduce((1,)), (rows,))
  lanes = np.asarray(table, np.float32)[np.arange(128) % 16]  # lane t holds entry t % 16
  out = np.full((rows, tile_k), np.nan, np.float32)
  for (thread, reg), pos in word_pos.items():
    j, h = wgmma_layout.word_block_and_half(reg)
    (scale_row,) = row_pos[(thread, wgmma_layout.scale_register(h))][0]
    assert scale_row == wgmma_layout.slab_row(thread, h) == pos[0][0]
    vals = []
    for w in range(2):
      word = np.uint32(words[pos[w]])
      for p in range(8):
        code = int(word >> np.uint32(4 * p))
        src = (thread // 32) * 32 + ((thread % 32) & 0x10 | code & 0xF)
        col = j if blocksize is None else wgmma_layout.slab_column(0, j, thread, blocksize)
        vals.append(np.float32(lanes[src]) * np.float32(scales[scale_row, col]))
    for q in range(8):
      lo, hi = vals[2 * q], vals[2 * q + 1]
      for value, (r, c) in zip((lo, hi), out_pos[(thread, wgmma_layout.operand_register(reg, q))]):
        assert np.isnan(out[r, c]), "written twice"
        out[r, c] = np.asarray(value, np.float32).astype(dtype).astype(np.float32)
  assert not np.isnan(out).any(), "an operand element was never written"
  return out


@pytest.mark.parametrize("tile_k,dtype", [(64, ml_dtypes.bfloat16), (256, np.float16)])
def test_emulated_decoder_yields_the_dequantized_weight_in_decoder_order(tile_k, dtype):
  rng = np.random.default_rng(tile_k)
  packed = rng.integers(0, 256, (64, tile_k // 2), dtype=np.uint8)  # bnb bytes of W[64, tile_k]
  scales = rng.uniform(0.1, 2.0, (64, tile_k // 64)).astype(np.float32)
  table = np.sort(rng.standard_normal(16)).astype(np.float32)
  words = packed.view("<u4").view(np.int32)
  codes = np.empty((64, tile_k), np.int64)
  codes[:, 0::2], codes[:, 1::2] = packed >> 4, packed & 0xF
  weight = (table[codes] * np.repeat(scales, 64, axis=1)).astype(dtype).astype(np.float32)
  want = np.empty_like(weight)  # real column k of each block at PERMUTATION[k]
  for blk in range(tile_k // 64):
    want[:, 64 * blk + wgmma_layout.PERMUTATION] = weight[:, 64 * blk:64 * blk + 64]
  np.testing.assert_array_equal(emulate_decode(words, scales, table, dtype), want)


@pytest.mark.parametrize("tile_k", [64, 128, 256])
def test_unscaled_decoder_splits_the_operand_into_its_blocks(tile_k):
  # WgmmaConfig(post_scale): the decoder hands each 64-weight block to its own wgmma. Its
  # register q of block j must hold what operand register q + 8 j of the whole tile holds
  # (the same rows, columns 64 j + c), for every thread (Mosaic's layout, numpy).
  from jax.experimental.mosaic.gpu import fragmented_array as fa
  whole = wgmma_layout.register_positions(fa.WGMMA_LAYOUT, (64, tile_k))
  block = wgmma_layout.register_positions(fa.WGMMA_LAYOUT, (64, 64))
  words = wgmma_layout.register_positions(fa.WGMMA_LAYOUT, (64, tile_k // 8))
  seen = set()
  for thread, reg in words:
    j, _ = wgmma_layout.word_block_and_half(reg)
    for q in range(8):
      full = wgmma_layout.operand_register(reg, q)
      local = list(full)
      local[1] -= 8 * j
      assert [(r, c - 64 * j) for r, c in whole[(thread, full)]] == \
          block[(thread, tuple(local))]
      seen.add((thread, j, tuple(local)))
  assert len(seen) == 128 * (tile_k // 64) * len({r for t, r in block if t == 0})


@pytest.mark.parametrize("blocksize", [16, 32, 64, 128])
def test_emulated_slab_decoder_scales_each_weight_by_its_own_block(blocksize):
  # Blocks of 16 and 32 (NVFP4, MXFP4): the four lanes that share a row hold different
  # blocks, so each reads its own slab column.
  tile_k = 128
  rng = np.random.default_rng(blocksize)
  packed = rng.integers(0, 256, (64, tile_k // 2), dtype=np.uint8)
  scales = rng.uniform(0.1, 2.0, (64, tile_k // blocksize)).astype(np.float32)
  table = np.sort(rng.standard_normal(16)).astype(np.float32)
  codes = np.empty((64, tile_k), np.int64)
  codes[:, 0::2], codes[:, 1::2] = packed >> 4, packed & 0xF
  weight = (table[codes] * np.repeat(scales, blocksize, axis=1)).astype(np.float32)
  want = np.empty_like(weight)
  for blk in range(tile_k // 64):
    want[:, 64 * blk + wgmma_layout.PERMUTATION] = weight[:, 64 * blk:64 * blk + 64]
  got = emulate_decode(packed.view("<u4").view(np.int32), scales, table, np.float32, blocksize)
  np.testing.assert_array_equal(got, want)
  if blocksize < 64:  # the same scales read per 64 (as before) would be wrong
    with pytest.raises(AssertionError):
      np.testing.assert_array_equal(
          emulate_decode(packed.view("<u4").view(np.int32), scales, table, np.float32), want)


def test_small_blocks_take_the_slab_with_a_split_that_fits():
  _, mx = make_weight(256, 16384, 32, "byte", seed=2)
  cfg = wgmma.fit(wgmma.WgmmaConfig(split_k=1), 64, 256, 16384)
  assert cfg.split_k == 1 and not cfg.slab
  assert not wgmma.slab_ok(mx, 64, 16384, cfg)  # 512 scales of 32 a row: over a TMA box
  small = wgmma.small_block_config(cfg, mx, 64, 16384)
  assert small.slab and small.split_k == 2 and wgmma.slab_ok(mx, 64, 16384, small)
  _, nf = make_weight(256, 16384, 64, "float", seed=2)
  assert wgmma.small_block_config(cfg, nf, 64, 16384) is cfg  # blocks of 64: unchanged
  with pytest.raises(ValueError, match="kernel reads them from the slab"):
    wgmma.kernel_scales(mx, mx)
  # K = 64 * 3 with blocks of 16: 12 scales a row, 48 bytes, but 3 tiles split at most 3 ways
  _, nv = make_weight(64, 192, 16, "byte", seed=2)
  one = wgmma.fit(wgmma.WgmmaConfig(tile_k=64), 16, 64, 192)
  assert wgmma.small_block_config(one, nv, 16, 192).split_k in (1, 3)
  _, tiny = make_weight(64, 64, 16, "byte", seed=2)  # 4 scales: a 16-byte box row, fits
  assert wgmma.small_block_config(wgmma.fit(wgmma.WgmmaConfig(), 16, 64, 64), tiny, 16, 64).slab


def test_small_blocks_take_the_mosaic_kernel_only_where_recorded():
  assert lut_api.limits("no_such_device")["wgmma_min_blocksize"] == 64


def test_permuted_activations_meet_the_permuted_weight():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 128))
  w = rng.standard_normal((5, 128))
  w_log = np.empty_like(w)
  for blk in range(2):  # the decoder puts real column k of each block at PERMUTATION[k]
    w_log[:, 64 * blk + wgmma_layout.PERMUTATION] = w[:, 64 * blk:64 * blk + 64]
  x_log = np.asarray(wgmma_layout.permute_activations(jnp.asarray(x, jnp.float32)), np.float64)
  assert not np.allclose(x_log, x)
  np.testing.assert_allclose(x_log @ w_log.T, x @ w.T, rtol=1e-5)


def test_fit_divides_the_shape_and_stays_in_shared_memory():
  cfg = wgmma.fit(wgmma.WgmmaConfig(tile_k=256, sub=4, steps=6), 256, 192, 4096)
  assert 192 % (64 * cfg.sub) == 0 and 4096 % (cfg.tile_k * cfg.split_k) == 0
  assert wgmma.smem_bytes(256, cfg.tile_k, cfg.sub, cfg.steps) <= wgmma.SMEM_LIMIT
  small = wgmma.fit(wgmma.WgmmaConfig(), 16, 8192, 8192)
  assert small.split_k == 8 and small.steps == 4  # 1024 CTAs: the fastest at M = 16
  assert wgmma.fit(wgmma.WgmmaConfig(), 128, 8192, 8192).split_k == 1
  assert wgmma.fit(wgmma.WgmmaConfig(tile_k=256), 16, 64, 192).tile_k == 64
  with pytest.raises(ValueError, match="tile_k"):
    wgmma.WgmmaConfig(tile_k=96)
  with pytest.raises(ValueError, match="split_k"):
    wgmma.WgmmaConfig(split_k=-1)


def test_slab_only_where_a_tma_box_and_the_scales_allow():
  _, fmt = make_weight(64, 256, 64, "float", seed=1)
  cfg = wgmma.fit(wgmma.WgmmaConfig(), 16, 256, 4096)
  assert wgmma.slab_ok(fmt, 16, 4096, cfg)  # 8 scales of 64 per CTA row: 32 bytes
  assert not wgmma.slab_ok(fmt, 16, 1024, wgmma.fit(wgmma.WgmmaConfig(), 16, 256, 1024))
  for encoding in ("float*", "nested", "byte"):  # XLA decodes them in the stored order
    _, other = make_weight(64, 256, 64, encoding, seed=1)
    assert wgmma.slab_ok(other, 16, 4096, cfg)
  full = wgmma.WgmmaConfig(tile_k=64, steps=6, split_k=1)  # 6 * 32 KiB of activations
  assert wgmma.smem_bytes(256, 64, 1, 6) + 64 * 64 * 4 > wgmma.SMEM_LIMIT
  assert not wgmma.slab_ok(fmt, 256, 4096, full)  # the slab would not fit beside them


def test_coded_slab_only_for_byte_scales_that_split_over_the_threads():
  _, nested = make_weight(64, 256, 64, "nested", seed=1)
  _, plain = make_weight(64, 256, 64, "float", seed=1)
  cfg = wgmma.fit(wgmma.WgmmaConfig(slab=True, coded_slab=True), 16, 192, 3072)
  assert cfg.sub == 1 and 3072 // cfg.split_k // 64 == 6  # 64 rows x 6 columns: 384 entries
  assert not wgmma.coded_slab_ok(nested, 16, 3072, cfg)  # 6 columns: not a 16-byte box row
  cfg = wgmma.fit(wgmma.WgmmaConfig(slab=True, coded_slab=True, split_k=2), 16, 256, 4096)
  assert wgmma.coded_slab_ok(nested, 16, 4096, cfg)
  assert not wgmma.coded_slab_ok(plain, 16, 4096, cfg)  # float scales: the TMA slab
  assert not wgmma.coded_slab_ok(nested, 16, 4096, dataclasses.replace(cfg, coded_slab=False))
  # 64 codes per thread (M = 128 on 8192 x 8192, no split): XLA decodes them instead.
  whole = wgmma.fit(wgmma.WgmmaConfig(coded_slab=True), 128, 8192, 8192)
  assert whole.split_k == 1 and wgmma.slab_ok(nested, 128, 8192, whole)
  assert not wgmma.coded_slab_ok(nested, 128, 8192, whole)
  assert wgmma.coded_slab_ok(nested, 128, 8192, dataclasses.replace(whole, split_k=4))
  # late_slab does not raise that limit for double-quantized codes (run 10).
  assert not wgmma.coded_slab_ok(nested, 128, 8192, dataclasses.replace(whole, late_slab=True))
  # The GPU case below that relies on late_slab for its in-kernel decode (32 per thread):
  # byte scales; double-quantized codes are decoded before the pipeline whatever late_slab
  # says, so at most 16 per thread.
  _, byte = make_weight(64, 256, 64, "byte", seed=1)
  late = wgmma.fit(wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, split_k=1),
                   40, 128, 4096)
  assert wgmma.late_slab_applies(byte, late) and wgmma.late_slab_applies(None, late)
  assert wgmma.coded_slab_ok(byte, 40, 4096, late)
  assert not wgmma.coded_slab_ok(byte, 40, 4096, dataclasses.replace(late, late_slab=False))
  assert not wgmma.late_slab_applies(nested, late)
  assert not wgmma.coded_slab_ok(nested, 40, 4096, late)
  assert wgmma.coded_slab_ok(nested, 40, 4096, dataclasses.replace(late, split_k=2))


@pytest.mark.parametrize("encoding,bs", [("float", 64), ("float*", 128), ("nested", 64),
                                         ("byte", 256)])
def test_stored_scales_are_the_kernel_scales_untransposed(encoding, bs):
  w, fmt = make_weight(128, 1024, bs, encoding, seed=5)
  stored = np.asarray(wgmma.stored_scales(w, fmt))
  assert stored.shape == (128, 1024 // bs) and stored.dtype == np.float32
  kernel = np.asarray(wgmma.kernel_scales(w, fmt))  # [K/64, N], each block's scale repeated
  np.testing.assert_array_equal(np.repeat(stored, bs // 64, axis=1).T, kernel)
  # and both are bitsandbytes' scales, computed here in numpy float32 (no FMA contraction)
  if encoding.startswith("float"):
    want = np.asarray(w.scales) * np.float32(fmt.scale_multiplier)
  else:
    want = np.asarray(w.scale_table)[np.asarray(w.scales)]
    if encoding == "nested":
      block = np.arange(want.size).reshape(want.shape) // 256
      want = want * np.asarray(w.group_scales)[block] + np.asarray(w.offset)[0]
  np.testing.assert_array_equal(stored, want.astype(np.float32))


LOWER_CASES = [  # n, k, m, blocksize, encoding, dtype, config
    (128, 512, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig()),
    (192, 1024, 5, 128, "nested", "float16", wgmma.WgmmaConfig(tile_k=256, sub=4, steps=3)),
    (64, 256, 200, 256, "float*", "bfloat16", wgmma.WgmmaConfig(tile_k=64, split_k=2)),
    (256, 4096, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig(slab=True)),
    (256, 4096, 16, 64, "nested", "bfloat16", wgmma.WgmmaConfig(slab=True, reduce=True)),
    (128, 2048, 128, 128, "byte", "float16", wgmma.WgmmaConfig(sub=2, split_k=2, reduce=True)),
    (256, 4096, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, reduce=True)),
    (128, 2048, 40, 128, "byte", "float16", wgmma.WgmmaConfig(slab=True, coded_slab=True, sub=2)),
    (256, 4096, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig(slab=True, late_slab=True)),
    (256, 4096, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True)),
    (128, 4096, 40, 64, "byte", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, split_k=1)),
    # blocks of 32 and 16 (MXFP4, NVFP4): always a slab, float32 or decoded in the kernel
    (256, 4096, 16, 32, "byte", "bfloat16", wgmma.WgmmaConfig()),
    (256, 4096, 16, 16, "byte", "bfloat16",
     wgmma.WgmmaConfig(coded_slab=True, late_slab=True, reduce=True)),
    (128, 2048, 40, 16, "float", "float16", wgmma.WgmmaConfig(sub=2)),
    # the output written as [M, N]
    (256, 4096, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True,
                       transpose_out=True)),
    (128, 1024, 40, 64, "float", "float16", wgmma.WgmmaConfig(sub=2, transpose_out=True)),
    # each block's float32 sum scaled after its wgmma (blocks of 32 ignore it)
    (128, 512, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig(post_scale=True)),
    (256, 4096, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True,
                       post_scale=True)),
    (128, 2048, 40, 128, "byte", "float16", wgmma.WgmmaConfig(sub=2, tile_k=256,
                                                             post_scale=True)),
    (256, 4096, 16, 32, "byte", "bfloat16", wgmma.WgmmaConfig(post_scale=True)),
]


@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", LOWER_CASES)
def test_every_variant_lowers_for_cuda(n, k, m, bs, encoding, dtype, config):
  w, fmt = make_weight(n, k, bs, encoding, seed=3)
  x = jax.ShapeDtypeStruct((m, k), jnp.dtype(dtype))
  f = jax.jit(lambda x, w: wgmma.wgmma_4bit(x, w, fmt=fmt, config=config))
  text = f.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text


GPU_CASES = [  # n, k, m, blocksize, encoding, dtype, config
    (128, 1024, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig()),
    (256, 2048, 5, 64, "nested", "bfloat16", wgmma.WgmmaConfig(sub=2, split_k=2)),
    (192, 1024, 64, 128, "byte", "float16", wgmma.WgmmaConfig(tile_k=256, sub=4, steps=3)),
    (64, 512, 200, 256, "float*", "bfloat16", wgmma.WgmmaConfig(tile_k=64, split_k=2)),
    (320, 768, 33, 64, "nested", "float16", wgmma.WgmmaConfig(tile_k=256, split_k=3)),
    (128, 2048, 128, 64, "float", "bfloat16", wgmma.WgmmaConfig(sub=2, steps=3)),
    (256, 4096, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig(slab=True)),
    (256, 4096, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig()),
    (128, 4096, 64, 128, "float", "float16", wgmma.WgmmaConfig(sub=2, slab=True)),
    (256, 4096, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig(reduce=True)),
    (256, 4096, 24, 64, "nested", "bfloat16", wgmma.WgmmaConfig(slab=True, reduce=True)),
    (192, 2048, 128, 128, "byte", "float16", wgmma.WgmmaConfig(sub=3, split_k=4, reduce=True)),
    # scales decoded in the kernel: groups of 256 blocks cross rows (48 blocks a row)
    (192, 3072, 8, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, sub=3, split_k=2, reduce=True)),
    (128, 4096, 24, 128, "byte", "float16", wgmma.WgmmaConfig(slab=True, coded_slab=True)),
    (256, 2048, 1, 64, "nested", "bfloat16", wgmma.WgmmaConfig(slab=True, coded_slab=True)),
    (256, 4096, 16, 128, "float*", "bfloat16", wgmma.WgmmaConfig(slab=True, late_slab=True)),
    (128, 4096, 24, 64, "nested", "float16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, split_k=4)),
    # 32 codes per thread: in-kernel decode only because of late_slab
    (128, 4096, 40, 64, "byte", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, split_k=1)),
    # blocks of 32 and 16 (MXFP4, NVFP4): each lane reads its own block's scale
    (256, 4096, 16, 32, "byte", "bfloat16", wgmma.WgmmaConfig()),
    (256, 4096, 16, 32, "byte", "bfloat16",
     wgmma.WgmmaConfig(coded_slab=True, late_slab=True, reduce=True)),
    (256, 4096, 16, 16, "byte", "bfloat16",
     wgmma.WgmmaConfig(coded_slab=True, late_slab=True, reduce=True)),
    (128, 2048, 64, 16, "float", "float16", wgmma.WgmmaConfig(sub=2)),
    (192, 2048, 8, 32, "nested", "bfloat16", wgmma.WgmmaConfig(coded_slab=True, split_k=4)),
    (128, 8192, 128, 16, "byte", "bfloat16", wgmma.WgmmaConfig(tile_k=256)),
    # the output written as [M, N]: with and without the add-reduction, several row tiles
    (256, 4096, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True,
                       transpose_out=True)),
    (128, 1024, 40, 64, "float", "float16", wgmma.WgmmaConfig(sub=2, transpose_out=True)),
    (192, 2048, 200, 128, "byte", "bfloat16",
     wgmma.WgmmaConfig(tile_k=64, split_k=2, transpose_out=True)),
]


@pytest.mark.skipif(not HOPPER, reason="the compiled kernel needs an sm_90 GPU")
@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", GPU_CASES)
def test_compiled_kernel_meets_the_exact_product(n, k, m, bs, encoding, dtype, config):
  w, fmt = make_weight(n, k, bs, encoding, seed=n + k + m)
  rng = np.random.default_rng(m)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.dtype(dtype))
  bias = jnp.asarray(rng.standard_normal(n), jnp.float32)
  wk = kernel_weight(w, fmt, "mma", "shfl", jnp.dtype(dtype))
  got = pallas_kernels.matmul_lut(x, w, fmt=fmt, bias=bias, kind="mma", config=config,
                                  implementation="pallas")
  assert got.dtype == jnp.dtype(dtype) and got.shape == (m, n)
  check_close(got, x, wk, dtype, False, bias)
  default = pallas_kernels.matmul_lut(x, w, fmt=fmt, bias=bias, kind="mma",
                                      implementation="pallas")  # the dispatch's own config
  check_close(default, x, wk, dtype, False, bias)


POST_SCALE_CASES = [  # n, k, m, blocksize, encoding, dtype, config (post_scale added)
    (128, 1024, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig()),
    (256, 4096, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig(slab=True, late_slab=True,
                                                              reduce=True)),
    (256, 4096, 24, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True,
                       transpose_out=True)),
    (192, 1024, 64, 128, "byte", "float16", wgmma.WgmmaConfig(tile_k=256, sub=3, steps=3)),
    (128, 2048, 8, 64, "float*", "bfloat16", wgmma.WgmmaConfig(sub=2, split_k=4)),
]


@pytest.mark.skipif(not HOPPER, reason="the compiled kernel needs an sm_90 GPU")
@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", POST_SCALE_CASES)
def test_post_scaled_kernel_meets_its_exact_product(n, k, m, bs, encoding, dtype, config):
  # The contract of post_scale: table values rounded to the 16-bit type, each block's
  # float32 sum times its scale (the Triton kernels' "prmt" contract).
  config = dataclasses.replace(config, post_scale=True)
  w, fmt = make_weight(n, k, bs, encoding, seed=n + k + m)
  x = jnp.asarray(np.random.default_rng(m).standard_normal((m, k)), jnp.dtype(dtype))
  got = pallas_kernels.matmul_lut(x, w, fmt=fmt, kind="mma", config=config,
                                  implementation="pallas")
  check_close(got, x, kernel_weight(w, fmt, "mma", "prmt", jnp.dtype(dtype)), dtype, False)


@pytest.mark.skipif(not HOPPER, reason="the compiled kernel needs an sm_90 GPU")
def test_group_shares_the_permuted_activations():
  w1, fmt = make_weight(256, 2048, 64, "nested", seed=256)
  w2 = make_weight(128, 2048, 64, "nested", seed=256)[0]  # same seed: the same table
  x = jnp.asarray(np.random.default_rng(7).standard_normal((21, 2048)), jnp.bfloat16)
  configs = [wgmma.WgmmaConfig(slab=True, reduce=True), wgmma.WgmmaConfig(sub=2)]
  bias = jnp.asarray(np.random.default_rng(8).standard_normal(128), jnp.float32)
  got = wgmma.wgmma_4bit_group(x, [w1, w2], fmt=fmt, configs=configs, biases=[None, bias])
  for g, w, b in zip(got, (w1, w2), (None, bias)):
    assert g.shape == (21, w.shape[0])
    check_close(g, x, kernel_weight(w, fmt, "mma", "shfl", jnp.bfloat16), jnp.bfloat16, False, b)


def test_call_sites_of_one_kernel_share_one_lowered_kernel():
  # A Llama decode step calls the same kernel once per layer: each call site must not
  # trace and serialize the Mosaic module again (100 KB of module text per site).
  w, fmt = make_weight(512, 512, 64, "float", seed=5)  # square: the calls can chain
  x = jax.ShapeDtypeStruct((16, 512), jnp.bfloat16)
  cfg = wgmma.WgmmaConfig(reduce=True)

  def modules(calls, config_of):
    def f(x, w):
      for i in range(calls):
        x = wgmma.wgmma_4bit(x, w, fmt=fmt, config=config_of(i)) * 1e-2
      return x
    text = jax.jit(f).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    return text.count("custom_call @mosaic_gpu")

  one = modules(1, lambda i: cfg)
  assert one >= 1
  assert modules(6, lambda i: cfg) == one  # six call sites, one kernel
  # Different static options are different kernels.
  assert modules(2, lambda i: dataclasses.replace(cfg, steps=3 + i)) == 2 * one


def test_fit_group_gives_each_weight_whole_cta_tiles():
  cfg = wgmma.fit_group(wgmma.WgmmaConfig(sub=4), 16, [4096, 1024, 1024], 4096)
  assert all(n % (64 * cfg.sub) == 0 for n in (4096, 1024, 1024))
  odd = wgmma.fit_group(wgmma.WgmmaConfig(sub=2), 16, [256, 64], 1024)
  assert odd.sub == 1  # 64 rows: one tile, so no CTA may hold two
  assert wgmma.fit_group(wgmma.WgmmaConfig(), 16, [8192], 8192) == \
      wgmma.fit(wgmma.WgmmaConfig(), 16, 8192, 8192)


GROUP_CASES = [  # rows of each weight, K, M, blocksize, encoding, dtype, config
    ((256, 128, 128), 2048, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True)),
    ((384, 128), 4096, 24, 64, "float", "bfloat16",
     wgmma.WgmmaConfig(slab=True, late_slab=True, reduce=True)),
    ((128, 256), 1024, 40, 128, "byte", "float16", wgmma.WgmmaConfig(sub=2)),
    ((256, 256), 4096, 8, 32, "byte", "bfloat16",
     wgmma.WgmmaConfig(coded_slab=True, late_slab=True, reduce=True)),
    ((128, 64, 64), 4096, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True,
                       transpose_out=True)),
]


def _group(rows, k, bs, encoding):
  w0, fmt = make_weight(rows[0], k, bs, encoding, seed=rows[0] + k)
  others = [make_weight(n, k, bs, encoding, seed=rows[0] + k)[0] for n in rows[1:]]
  # make_weight draws the table and codes first: same seed, same format; the weights differ
  # in their rows (and so in their bytes and scales)
  return [w0, *others], fmt


@pytest.mark.parametrize("rows,k,m,bs,encoding,dtype,config", GROUP_CASES)
def test_group_in_one_launch_lowers_to_one_kernel(rows, k, m, bs, encoding, dtype, config):
  ws, fmt = _group(rows, k, bs, encoding)
  x = jax.ShapeDtypeStruct((m, k), jnp.dtype(dtype))

  def kernels(configs):
    f = jax.jit(lambda x, ws: wgmma.wgmma_4bit_group(x, ws, fmt=fmt, configs=configs,
                                                      biases=[None] * len(ws)))
    return f.trace(x, ws).lower(lowering_platforms=("cuda",)).as_text().count(
        "custom_call @mosaic_gpu")

  assert kernels(config) == 1  # one launch for the group
  per_weight = [dataclasses.replace(config, steps=2 + i) for i in range(len(rows))]
  assert kernels(per_weight) == len(rows)  # one launch per weight


@pytest.mark.skipif(not HOPPER, reason="the compiled kernel needs an sm_90 GPU")
@pytest.mark.parametrize("rows,k,m,bs,encoding,dtype,config", GROUP_CASES)
def test_group_in_one_launch_meets_each_exact_product(rows, k, m, bs, encoding, dtype, config):
  ws, fmt = _group(rows, k, bs, encoding)
  rng = np.random.default_rng(m)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.dtype(dtype))
  biases = [None] + [jnp.asarray(rng.standard_normal(n), jnp.float32) for n in rows[1:]]
  got = wgmma.wgmma_4bit_group(x, ws, fmt=fmt, configs=config, biases=biases)
  for g, w, b in zip(got, ws, biases, strict=True):
    assert g.shape == (m, w.shape[0]) and g.dtype == jnp.dtype(dtype)
    check_close(g, x, kernel_weight(w, fmt, "mma", "shfl", jnp.dtype(dtype)), jnp.dtype(dtype),
                False, b)


@pytest.mark.parametrize("group_launch,kernels", [(1, 1), (0, 3)])
def test_dispatch_runs_a_group_in_one_launch_only_where_recorded(monkeypatch, group_launch,
                                                                 kernels):
  # The dispatch as on an H100 whose table records the Mosaic limits, lowered for CUDA here.
  lim = {**lut_api.DEFAULT_LIMITS, "wgmma_max_m": 256, "wgmma_group_launch": group_launch}
  monkeypatch.setattr(lut_api, "limits", lambda device: lim)
  monkeypatch.setattr(lut_api.wgmma_lib, "available", lambda: True)
  ws, fmt = _group((256, 128, 64), 2048, 64, "nested")  # three shapes: three kernels apart
  x = jax.ShapeDtypeStruct((16, 2048), jnp.bfloat16)
  f = jax.jit(lambda x, ws: pallas_kernels.matmul_lut_group(
      x, ws, fmt=fmt, implementation="pallas", interpret=False))
  text = f.trace(x, ws).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @mosaic_gpu") == kernels


def test_in_kernel_scale_decode_takes_the_offset_as_is():
  # The nested offset reaches the kernel as its own operand: no XLA concatenation per
  # product (run 7's decode profile found one per Mosaic weight, a kernel each).
  w, fmt = make_weight(256, 4096, 64, "nested", seed=4)
  cfg = wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True)
  assert wgmma.coded_slab_ok(fmt, 16, 4096, wgmma.fit(cfg, 16, 256, 4096))
  x = jax.ShapeDtypeStruct((16, 4096), jnp.bfloat16)
  f = jax.jit(lambda x, w: wgmma.wgmma_4bit(x, w, fmt=fmt, config=cfg))
  text = f.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
  assert "custom_call @mosaic_gpu" in text and "concatenate" not in text


def test_activation_permutation_is_a_reversal_and_a_transpose():
  x = jnp.arange(2 * 192, dtype=jnp.float32).reshape(2, 192)
  got = np.asarray(wgmma_layout.permute_activations(x))
  want = np.empty((2, 192), np.float32)
  for blk in range(3):
    want[:, 64 * blk + wgmma_layout.PERMUTATION] = np.asarray(x)[:, 64 * blk:64 * blk + 64]
  np.testing.assert_array_equal(got, want)
  text = jax.jit(wgmma_layout.permute_activations).lower(x).as_text()
  assert "gather" not in text
