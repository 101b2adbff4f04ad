"""One suite for the register-table kernels (GEMV and tensor-core) and their reference.

Every case checks the reference and the kernel (Pallas interpreter on the CPU,
compiled on a GPU) against the exact float64 product of the weight the kernel
claims to multiply: the float32 table value times the block scale, never
rounded, for the GEMV; that weight rounded once to ``x.dtype`` for the
tensor-core kernel. The bound is one output rounding plus float32 accumulation,
so a wrong tile, a missed mask, a wrong scale or an unwritten row fails.

The decoders' PTX cannot run in the interpreter: ``emulate_ptx`` executes the
exact program text the kernels inline (constants, selectors, shuffle lane rule)
in numpy, and a GPU run of this file checks the compiled kernels themselves.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels
from jaxfp4._src import formats
from pallas_kernels import LutConfig, WeightFormat
from pallas_kernels._src import lut_decode
from pallas_kernels._src.lut_matmul import api as lut_api
from pallas_kernels._src.lut_matmul import config as lut_config
from pallas_kernels._src.matmul_4bit.reference import decode_scales_reference
from tests.conftest import on_gpu
from tests.test_matmul_kernels import check_close, make_weight, repacked

INTERPRET = not on_gpu()
LUTS = {"nf4": tuple(formats.NF4_CODE.tolist()), "fp4": tuple(formats.FP4_DECODE.tolist()),
        "e2m1": tuple(formats.E2M1_VALUES.tolist())}


def exact_weight(w, fmt, table=None) -> np.ndarray:
  """float64 ``W[N, K]`` = ``table[nibble] * scale`` (``table`` default: ``fmt.lut``)."""
  n, k = w.shape
  tab = np.asarray(fmt.lut if table is None else table, np.float64)
  d = np.asarray(w.data).reshape(n, k // 2)
  un = np.empty((n, k))
  un[:, 0::2] = tab[d >> 4]
  un[:, 1::2] = tab[d & 0xF]
  return un * np.repeat(np.asarray(decode_scales_reference(w, fmt), np.float64), fmt.blocksize,
                        axis=1)


def kernel_weight(w, fmt, kind: str, decode: str, dtype) -> np.ndarray:
  """The weight each kernel multiplies (module docstring)."""
  if decode == "prmt":  # the 16-bit table, scale applied to the float32 sum
    table = lut_decode.table_values(fmt.lut, jnp.float16 if kind == "gemv" else dtype)
    return exact_weight(w, fmt, table)
  if kind == "gemv":
    return exact_weight(w, fmt)
  return np.asarray(pallas_kernels.decode_weight_reference(w, fmt, dtype).astype(jnp.float32),
                    np.float64)


CASES = [  # n, k, m, blocksize, encoding, dtype, config
    (64, 1024, 1, 64, "float", "bfloat16", LutConfig(kind="gemv", block_n=16, chunks=4)),
    (40, 1024, 3, 128, "nested/wgmma", "float16", LutConfig(kind="gemv", block_n=16, chunks=2,
                                                            groups=2, prefetch=2)),
    (48, 256, 2, 32, "byte", "float32", LutConfig(kind="gemv", block_n=16, chunks=4,
                                                  prefetch=False)),
    (24, 256, 4, 16, "float*", "bfloat16", LutConfig(kind="gemv", block_n=8, chunks=4)),
    (32, 512, 1, 64, "float", "float16", LutConfig(kind="gemv", block_n=16, chunks=2,
                                                   decode="prmt")),
    (64, 512, 1, 64, "float", "bfloat16", LutConfig(kind="mma", block_n=32, chunks=2)),
    (40, 1024, 19, 128, "nested/wgmma", "float16", LutConfig(kind="mma", block_n=16, chunks=2,
                                                             split_k=2, prefetch=2)),
    (48, 256, 5, 32, "byte", "bfloat16", LutConfig(kind="mma", block_n=16, chunks=2,
                                                   prefetch=False)),
    (24, 256, 33, 16, "float*", "float16", LutConfig(kind="mma", block_n=16, block_m=32,
                                                     chunks=4, split_k=3)),
    (32, 256, 16, 64, "float", "bfloat16", LutConfig(kind="mma", block_n=16, chunks=2,
                                                     decode="prmt")),
]


@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", CASES,
                         ids=[f"{c[6].kind}-{c[6].decode}-{c[4]}-bs{c[3]}-m{c[2]}" for c in CASES])
def test_kernel_and_reference_meet_the_exact_product(n, k, m, bs, encoding, dtype, config):
  encoding, _, layout = encoding.partition("/")
  w, fmt = make_weight(n, k, bs, encoding, seed=n + k + m)
  if config.decode == "prmt":  # a table the 16-bit type holds exactly, so the bound is tight
    t16 = jnp.float16 if config.kind == "gemv" else jnp.dtype(dtype)
    fmt = dataclasses.replace(fmt, lut=tuple(lut_decode.table_values(fmt.lut, t16).tolist()))
  rng = np.random.default_rng(m)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.dtype(dtype))
  bias = jnp.asarray(rng.standard_normal(n), jnp.float32)
  wk = kernel_weight(w, fmt, config.kind, config.decode, jnp.dtype(dtype))
  if layout:  # the bytes in the Mosaic decoder's K order: the same product of the same weight
    w, fmt = repacked(w, fmt)
  if config.decode == "shfl":  # the reference states the default decode's contract
    ref = pallas_kernels.lut_matmul_reference(x, w, fmt=fmt, kind=config.kind, bias=bias)
    check_close(ref, x, wk, dtype, False, bias)
  got = pallas_kernels.matmul_lut(x, w, fmt=fmt, bias=bias, kind=config.kind, config=config,
                                  implementation="pallas", interpret=INTERPRET)
  assert got.dtype == jnp.dtype(dtype) and got.shape == (m, n)
  check_close(got, x, wk, dtype, False, bias)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "e2m1"])
@pytest.mark.parametrize("table_dtype", ["bfloat16", "float16"])
def test_prmt_programs_decode_every_code(quant_type, table_dtype):
  lut = LUTS[quant_type]
  words = np.random.default_rng(1).integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
  regs = lut_decode.register_table_words(lut, table_dtype)[0]
  inputs = {"$1": words, **{f"${i + 2}": np.full_like(words, regs[i]) for i in range(4)}}
  want16 = lut_decode.table_bits(lut, table_dtype)
  for e in range(8):
    shift = 8 * (e // 2) + (4 if e % 2 == 0 else 0)  # element 2b: high nibble of byte b
    nib = (words >> shift) & 0xF
    f32 = lut_decode.emulate_ptx(lut_decode.word_element_ptx(lut, table_dtype, e), inputs)["$0"]
    np.testing.assert_array_equal(f32.view(np.float32),
                                  lut_decode.table_values(lut, table_dtype)[nib])
    h = lut_decode.emulate_ptx(lut_decode.word_element_ptx(lut, table_dtype, e, out16=True),
                               inputs)["$0"]
    np.testing.assert_array_equal((h & 0xFFFF).astype(np.uint16), want16[nib])


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "e2m1"])
def test_shuffle_programs_read_the_code_from_the_lane_holding_it(quant_type):
  table = np.asarray(LUTS[quant_type], np.float32)
  words = np.random.default_rng(2).integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
  for e in range(8):
    shift = 8 * (e // 2) + (4 if e % 2 == 0 else 0)
    got = lut_decode.emulate_ptx(
        lut_decode.shfl_element_ptx(e), {"$1": words, "$2": np.zeros_like(words)},
        lane_values=lambda lane: table.view(np.uint32)[lane & 15])["$0"]
    np.testing.assert_array_equal(got.view(np.float32), table[(words >> shift) & 0xF])


def test_emulator_refuses_unknown_instructions():
  with pytest.raises(ValueError, match="does not know"):
    lut_decode.emulate_ptx("add.u32 $0, $1, 1;", {"$1": np.zeros(1, np.uint32)})


def test_join_order_is_what_join_elements_builds():
  elems = [jnp.full((2, 3), e, jnp.int32) + 10 * jnp.arange(3)[None] for e in range(8)]
  joined = np.asarray(lut_decode.join_elements(elems))
  want = np.asarray([10 * w + e for w in range(3) for e in lut_decode.join_order()])
  np.testing.assert_array_equal(joined[0], want)
  assert sorted(lut_decode.join_order()) == list(range(8))


def test_tables_round_to_the_16_bit_type():
  bits = lut_decode.table_bits(LUTS["nf4"], "bfloat16")
  np.testing.assert_array_equal(
      bits, np.asarray(LUTS["nf4"], np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))
  with pytest.raises(ValueError, match="table_dtype"):
    lut_decode.table_bits(LUTS["nf4"], "float32")


def test_config_validation_and_fit():
  with pytest.raises(ValueError, match="kind"):
    LutConfig(kind="simt")
  with pytest.raises(ValueError, match="decode"):
    LutConfig(decode="gather")
  with pytest.raises(ValueError, match="block_m"):
    LutConfig(kind="mma", block_m=8)
  with pytest.raises(ValueError, match="chunks"):
    LutConfig(chunks=12)
  with pytest.raises(ValueError, match="groups"):
    LutConfig(groups=-1)
  c = lut_config.fit(LutConfig(kind="gemv", chunks=32), 1, 4096, 224)  # K = 14336
  assert c.chunks == 32 and 224 % c.chunks == 0
  c = lut_config.fit(LutConfig(kind="mma", block_m=128, chunks=4, split_k=8), 3, 64, 2)
  assert (c.block_m, c.chunks, c.split_k) == (16, 2, 1)


def test_dispatch_and_recorded_configs():
  h100 = "nvidia_h100_80gb_hbm3"
  lim = lut_api.limits(h100)
  assert (lim["gemv_max_m"], lim["mma_max_m"]) == (4, 128)
  # Mosaic on the H100 up to M = 256 (measured, benchmarks.md: at M = 256 it took 80.4 us
  # where dequantize + cuBLAS took 139.7), from q+k+v's 6144 x 4096 up, a group in one launch,
  # and blocks of 16 and 32 (run 7)
  assert (lim["wgmma_max_m"], lim["wgmma_min_weights"]) == (256, 6144 * 4096)
  assert (lim["wgmma_group_launch"], lim["wgmma_min_blocksize"]) == (1, 16)
  assert lut_api._bucket("wgmma", 129) == "wgmma/m256" != lut_api._bucket("wgmma", 128)
  assert lut_api.limits("unknown_gpu")["wgmma_max_m"] == 0  # Mosaic only where measured
  assert lut_api.limits("unknown_gpu") == lut_api.DEFAULT_LIMITS
  assert lut_api.choose_kind(1, jnp.float32, h100) == "gemv"
  assert lut_api.choose_kind(8, jnp.float32, h100) is None
  c = lut_api.get_config("gemv", 1, 8192, 8192, 64, h100)
  assert c.kind == "gemv" and 128 % c.chunks == 0
  c = lut_api.get_config("mma", 64, 8192, 8192, 64, h100)
  assert c.kind == "mma" and c.block_m == 64


def test_mosaic_dispatch_follows_the_recorded_limits(monkeypatch):
  # As if on an sm_90 GPU with Mosaic: the recorded limits alone decide.
  monkeypatch.setattr(lut_api.wgmma_lib, "available", lambda: True)
  fmt = WeightFormat(lut=LUTS["nf4"], blocksize=64)
  h100, bf16 = "nvidia_h100_80gb_hbm3", jnp.bfloat16
  assert lut_api.use_wgmma(16, 14336, 4096, fmt, bf16, h100)
  assert lut_api.use_wgmma(128, 4096, 14336, fmt, bf16, h100)
  assert lut_api.use_wgmma(256, 14336, 4096, fmt, bf16, h100)
  assert not lut_api.use_wgmma(257, 14336, 4096, fmt, bf16, h100)  # above wgmma_max_m
  assert not lut_api.use_wgmma(16, 4096, 4096, fmt, bf16, h100)  # below wgmma_min_weights
  assert lut_api.use_wgmma(16, 6144, 4096, fmt, bf16, h100)  # q+k+v in one launch
  assert not lut_api.use_wgmma(16, 14336, 4096, fmt, jnp.float32, h100)  # 16-bit x only
  assert lut_api.use_wgmma(16, 8192, 8192, WeightFormat(lut=LUTS["nf4"], blocksize=32),
                           bf16, h100)  # blocks of 32 (MXFP4) through the slab
  assert not lut_api.use_wgmma(16, 8192, 8192, WeightFormat(lut=LUTS["nf4"], blocksize=32),
                               bf16, "unknown_gpu")
  assert not lut_api.use_wgmma(16, 8192, 8192, fmt, bf16, "unknown_gpu")  # nothing recorded
  lim = lut_api.limits(h100)
  for m in (1, 4, 5):  # below "wgmma_min_m" the GEMV keeps M = 1-4
    assert lut_api.use_wgmma(m, 14336, 4096, fmt, bf16, h100) == (m >= lim["wgmma_min_m"])
  monkeypatch.setattr(lut_api, "limits", lambda kind: {**lim, "wgmma_min_m": 1})
  assert lut_api.use_wgmma(1, 14336, 4096, fmt, bf16, h100)
  assert not lut_api.use_wgmma(1, 14336, 4096, fmt, jnp.float32, h100)  # float32 x: the GEMV


def test_bad_input_is_named():
  w, fmt = make_weight(16, 128, 64, "float", seed=0)
  x32 = jnp.ones((2, 128), jnp.float32)
  with pytest.raises(ValueError, match="bfloat16 or float16"):
    pallas_kernels.matmul_lut(x32, w, fmt=fmt, kind="mma", interpret=True)
  with pytest.raises(ValueError, match="kind"):
    pallas_kernels.matmul_lut(x32, w, fmt=fmt, kind="simt", interpret=True)
  with pytest.raises(ValueError, match="x"):
    pallas_kernels.matmul_lut(jnp.ones((2, 64), jnp.bfloat16), w, fmt=fmt, interpret=True)
  with pytest.raises(ValueError, match="at most"):
    pallas_kernels.gemv_4bit_triton(jnp.ones((9, 128), jnp.bfloat16), w, fmt=fmt,
                                    config=LutConfig(chunks=2), interpret=True)


def test_straddling_blocks_use_the_reference():
  lut = LUTS["nf4"]
  fmt = WeightFormat(lut=lut, blocksize=64)
  assert not lut_api.can_use_kernel(6, 40, 64)
  assert lut_api.can_use_kernel(6, 128, 64)
  assert fmt.blocksize == 64


@pytest.mark.parametrize("kind,m", [("gemv", 1), ("mma", 16)])
def test_call_sites_of_one_triton_kernel_share_one_lowered_kernel(kind, m):
  # A decode step calls the same kernel once per layer; each call site must not trace and
  # serialize the Triton kernel again (lowered for CUDA here, on any machine).
  import jax
  from pallas_kernels._src.lut_matmul import gemv, mma
  w, fmt = make_weight(512, 512, 64, "float", seed=2)
  fn = gemv.gemv_4bit_triton if kind == "gemv" else mma.mma_4bit_triton
  cfg = lut_config.fit(LutConfig(kind=kind), m, 512, 512 // 64)
  x = jax.ShapeDtypeStruct((m, 512), jnp.bfloat16)

  def kernels(calls, config_of):
    def f(x, w):
      for i in range(calls):
        x = fn(x, w, fmt=fmt, config=config_of(i)) * 1e-2
      return x
    return jax.jit(f).trace(x, w).lower(lowering_platforms=("cuda",)).as_text().count(
        "custom_call @")

  assert kernels(1, lambda i: cfg) == 1
  assert kernels(5, lambda i: cfg) == 1
  assert kernels(2, lambda i: dataclasses.replace(cfg, num_warps=4 * (i + 1))) == 2


GEMV_T_CASES = [  # n, k, m, blocksize, encoding, dtype, config (None: the default)
    (64, 512, 1, 64, "float", "bfloat16", None),
    (40, 512, 2, 128, "nested/wgmma", "float16", LutConfig(kind="gemv", block_n=16, chunks=2,
                                                           groups=2, prefetch=2)),
    (50, 256, 2, 32, "byte", "float32", LutConfig(kind="gemv", block_n=8, chunks=4,
                                                  prefetch=False)),
    (24, 128, 8, 16, "float*", "bfloat16", LutConfig(kind="gemv", block_n=8, chunks=4,
                                                     prefetch=0)),
]


@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", GEMV_T_CASES,
                         ids=[f"{c[4]}-bs{c[3]}-m{c[2]}" for c in GEMV_T_CASES])
def test_transposed_gemv_and_reference_meet_the_exact_product(n, k, m, bs, encoding, dtype,
                                                               config):
  """``dy @ W`` with the float32 weight (the GEMV's contract), over the rows of W: rows past
  a whole tile (40, 50, 24 rows), repeated tiles of the last split, every scale encoding."""
  encoding, _, layout = encoding.partition("/")
  w, fmt = make_weight(n, k, bs, encoding, seed=n + k + m)
  dy = jnp.asarray(np.random.default_rng(m).standard_normal((m, n)), jnp.dtype(dtype))
  wk = exact_weight(w, fmt)
  if layout:  # columns of dy @ W come out of the kernel in the stored order: reordered
    w, fmt = repacked(w, fmt)
  check_close(pallas_kernels.gemv_t_reference(dy, w, fmt=fmt), dy, wk, dtype, True)
  got = pallas_kernels.gemv_t_4bit_triton(dy, w, fmt=fmt, config=config, interpret=INTERPRET)
  assert got.dtype == jnp.dtype(dtype) and got.shape == (m, k)
  check_close(got, dy, wk, dtype, True)


MMA_T_CASES = [  # n, k, m, blocksize, encoding, dtype, config (None: the default)
    (64, 256, 16, 64, "float/wgmma", "bfloat16", None),
    (40, 512, 19, 128, "nested", "float16", LutConfig(kind="mma", block_n=16, chunks=2,
                                                      groups=2, prefetch=2)),
    (50, 256, 33, 32, "byte", "bfloat16", LutConfig(kind="mma", block_m=16, block_n=16,
                                                    chunks=4, prefetch=False)),
    (24, 256, 5, 16, "float*", "float16", LutConfig(kind="mma", block_n=16, chunks=4)),
]


@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", MMA_T_CASES,
                         ids=[f"{c[4]}-bs{c[3]}-m{c[2]}" for c in MMA_T_CASES])
def test_transposed_tensor_core_kernel_meets_the_exact_product(n, k, m, bs, encoding, dtype,
                                                               config):
  """``dy @ W`` with the weight rounded once to ``dy``'s type (the tensor-core contract):
  rows of W past a whole step, rows of dy past a whole tile (19, 33, 5), repeated tiles of
  the last split, every scale encoding."""
  encoding, _, layout = encoding.partition("/")
  w, fmt = make_weight(n, k, bs, encoding, seed=n + k + m)
  dy = jnp.asarray(np.random.default_rng(m).standard_normal((m, n)), jnp.dtype(dtype))
  wk = kernel_weight(w, fmt, "mma", "shfl", jnp.dtype(dtype))
  if layout:
    w, fmt = repacked(w, fmt)
  check_close(pallas_kernels.matmul_4bit_reference(dy, w, fmt=fmt, transpose=True), dy, wk,
              dtype, True)
  got = pallas_kernels.mma_t_4bit_triton(dy, w, fmt=fmt, config=config, interpret=INTERPRET)
  assert got.dtype == jnp.dtype(dtype) and got.shape == (m, k)
  check_close(got, dy, wk, dtype, True)


def test_transposed_gemv_bad_input_and_dispatch(monkeypatch):
  w, fmt = make_weight(16, 128, 64, "float", seed=1)
  with pytest.raises(ValueError, match="at most 8 rows of `dy`"):
    pallas_kernels.gemv_t_4bit_triton(jnp.ones((9, 16)), w, fmt=fmt, interpret=True)
  with pytest.raises(ValueError, match=r"`x` must be \[M, 16\]"):
    pallas_kernels.gemv_t_4bit_triton(jnp.ones((1, 128)), w, fmt=fmt, interpret=True)
  with pytest.raises(ValueError, match="must be 'shfl'"):
    pallas_kernels.gemv_t_4bit_triton(jnp.ones((1, 16)), w, fmt=fmt, interpret=True,
                                      config=LutConfig(decode="prmt"))
  # Off unless the device kind records "gemv_t_max_m" / "mma_t_max_m"; then up to that many
  # rows of dy, the tensor-core kernel for 16-bit dy only.
  bf16 = jnp.bfloat16
  assert lut_api.transposed_kind(1, 16, 128, 64, bf16, None) is None
  monkeypatch.setitem(lut_api.DEFAULT_LIMITS, "gemv_t_max_m", 4)
  monkeypatch.setitem(lut_api.DEFAULT_LIMITS, "mma_t_max_m", 64)
  assert lut_api.transposed_kind(4, 16, 128, 64, bf16, None) == "gemv_t"
  assert lut_api.transposed_kind(5, 16, 128, 64, bf16, None) == "mma_t"
  assert lut_api.transposed_kind(64, 16, 128, 64, jnp.float16, None) == "mma_t"
  assert lut_api.transposed_kind(5, 16, 128, 64, jnp.float32, None) is None
  assert lut_api.transposed_kind(65, 16, 128, 64, bf16, None) is None
  assert lut_api.transposed_kind(1, 16, 100, 64, bf16, None) is None  # K not whole blocks
  assert lut_api.gemv_t_config(1, 16, 128).block_n == 16
  assert lut_api.gemv_t_config(4, 16, 128).block_n == 8
  assert lut_api.mma_t_config(16, 16, 128).block_m == 64
  with pytest.raises(ValueError, match="bfloat16 or float16 `dy`"):
    pallas_kernels.mma_t_4bit_triton(jnp.ones((16, 16)), w, fmt=fmt, interpret=True)


@pytest.mark.parametrize("kernel,m", [("gemv_t", 4), ("mma_t", 32)])
@pytest.mark.parametrize("encoding", ["float", "nested"])
def test_transposed_kernels_lower_for_cuda_once_per_kernel(kernel, m, encoding):
  # Lowered for CUDA on any machine (Pallas to Triton IR; only a GPU compiles and runs it):
  # the call sites of one config share one kernel, as the forward GEMV's do.
  import jax
  w, fmt = make_weight(512, 1024, 64, encoding, seed=3)
  dy = jax.ShapeDtypeStruct((m, 512), jnp.bfloat16)
  fn = getattr(pallas_kernels, f"{kernel}_4bit_triton")

  def kernels(configs):
    def f(dy, w):
      out = 0.0
      for cfg in configs:
        out = out + fn(dy, w, fmt=fmt, config=cfg)
      return out
    return jax.jit(f).trace(dy, w).lower(lowering_platforms=("cuda",)).as_text().count(
        "custom_call @")

  cfg = LutConfig(kind="gemv" if kernel == "gemv_t" else "mma", block_n=16, chunks=2,
                  prefetch=2)
  assert kernels([cfg, cfg, cfg]) == 1
  assert kernels([cfg, dataclasses.replace(cfg, prefetch=0)]) == 2


@pytest.mark.skipif(not on_gpu(), reason="the input gradient's kernel route runs on a GPU")
def test_input_gradient_takes_the_transposed_kernels_where_recorded(monkeypatch):
  import jax
  import jaxfp4
  from jaxfp4._src import product
  wf = jax.random.normal(jax.random.key(0), (256, 512), jnp.bfloat16)
  packed, state = jaxfp4.quantize_4bit(wf, quant_type="nf4", compress_statistics=True)
  monkeypatch.setitem(lut_api.DEFAULT_LIMITS, "gemv_t_max_m", 8)
  monkeypatch.setitem(lut_api.DEFAULT_LIMITS, "mma_t_max_m", 64)
  monkeypatch.setattr(lut_api, "limits", lambda device: dict(lut_api.DEFAULT_LIMITS))
  for m, kind in ((3, "gemv_t"), (24, "mma_t")):
    assert product.route(m, state, jnp.bfloat16, None, transpose=True) == kind
    x = jax.random.normal(jax.random.key(1), (m, 512), jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(2), (m, 256), jnp.bfloat16)
    _, vjp = jax.vjp(lambda x: jaxfp4.matmul_4bit(x, packed, state), x)
    (dx,) = vjp(dy)
    w, fmt = product.kernel_weight(packed, state)
    wk = exact_weight(w, fmt) if kind == "gemv_t" else kernel_weight(w, fmt, "mma", "shfl",
                                                                     jnp.bfloat16)
    check_close(dx, dy, wk, "bfloat16", True)
