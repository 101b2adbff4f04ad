"""``matmul_lut``: the register-table kernels, dispatched by M and by measured configs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pallas_kernels._src import common
from pallas_kernels._src import lut_decode
from pallas_kernels._src import tuning
from pallas_kernels._src.lut_matmul import scales as scales_lib
from pallas_kernels._src.lut_matmul import gemv_t as gemv_t_lib
from pallas_kernels._src.lut_matmul import mma_t as mma_t_lib
from pallas_kernels._src.lut_matmul import wgmma as wgmma_lib
from pallas_kernels._src.lut_matmul.config import LutConfig, MAX_GEMV_ROWS, fit
from pallas_kernels._src.lut_matmul.gemv import gemv_4bit_group_triton, gemv_4bit_triton
from pallas_kernels._src.lut_matmul.mma import mma_4bit_group_triton, mma_4bit_triton
from pallas_kernels._src.lut_matmul.reference import lut_matmul_reference
from pallas_kernels._src.matmul_4bit.weight import (PackedWeight, WeightFormat, check_group,
                                                    check_operands)

# Crossovers when nothing is recorded for the device kind (measured on an H100,
# 8192 x 8192 NF4, docs/benchmarks.md): the CUDA-core GEMV up to 4 rows of x,
# the tensor-core kernel up to 128, dequantize + cuBLAS above. The Mosaic GPU
# tensor-core kernel runs only on device kinds where it was measured and its limits
# recorded: up to "wgmma_max_m" rows, on weights of at least "wgmma_min_weights"
# (N * K); elsewhere the tensor-core kind is the Triton kernel. On an H100 it won from
# 14336 x 4096 up and lost on 4096 x 4096 and smaller (docs/benchmarks.md).
# The Mosaic kernel also takes M = 1-4 (padded to 8 rows) where "wgmma_min_m" says so: it
# then replaces the GEMV on the weights it qualifies for. Scale blocks smaller than 64
# (MXFP4's 32, NVFP4's 16) take it only down to a recorded "wgmma_min_blocksize".
# A weight group (q/k/v, gate/up) whose summed rows qualify runs as one Mosaic launch where
# "wgmma_group_launch" is recorded as 1; else one launch per weight, each qualifying alone.
# The input gradient dy @ W runs the transposed GEMV (gemv_t.py) up to "gemv_t_max_m" rows of
# dy and the transposed tensor-core kernel (mma_t.py) up to "mma_t_max_m": both 0 (never)
# until they are measured on the device kind.
DEFAULT_LIMITS = {"gemv_max_m": 4, "mma_max_m": 128, "wgmma_max_m": 0, "wgmma_min_weights": 0,
                  "wgmma_min_m": 5, "wgmma_min_blocksize": 64, "wgmma_group_launch": 0,
                  "gemv_t_max_m": 0, "mma_t_max_m": 0}

# Configs measured on an H100 (tools/sweep_lut_kernels.py, 8192 x 8192) by M bucket.
_DEFAULT_CONFIGS = {
    "gemv/m1": LutConfig(kind="gemv", block_n=16, chunks=16, num_warps=8),
    "gemv/m2": LutConfig(kind="gemv", block_n=16, chunks=32, num_warps=8),
    "gemv/m4": LutConfig(kind="gemv", block_n=16, chunks=16, num_warps=4),
    "gemv/m8": LutConfig(kind="gemv", block_n=16, chunks=16, num_warps=4),
    "mma/m16": LutConfig(kind="mma", block_n=128, block_m=16, chunks=2, split_k=4, num_warps=8),
    "mma/m64": LutConfig(kind="mma", block_n=128, block_m=64, chunks=2, split_k=4, num_warps=8),
    "mma/m128": LutConfig(kind="mma", block_n=64, block_m=128, chunks=2, split_k=2,
                          num_warps=4),
}


# The Mosaic GPU kernel holds all M rows of x in one wgmma (at most 256 wide).
WGMMA_MAX_M = 256


def use_wgmma(m: int, n: int, k: int, fmt: WeightFormat, dtype,
              device_kind: str | None = None) -> bool:
  """The tensor-core kind runs the Mosaic GPU kernel: JAX's Mosaic GPU backend on an
  sm_90 GPU whose kind has the kernel's limits recorded, a weight at least as large as
  the recorded minimum, and a shape and format it takes; else the Triton one."""
  if not (wgmma_lib.supports(n, k, fmt, dtype) and wgmma_lib.available()):
    return False
  lim = limits(device_kind or common.device_kind())
  return (lim["wgmma_min_m"] <= m <= min(WGMMA_MAX_M, lim["wgmma_max_m"])
          and n * k >= lim["wgmma_min_weights"] and fmt.blocksize >= lim["wgmma_min_blocksize"])


def limits(device_kind: str | None) -> dict[str, int]:
  """The crossovers (``DEFAULT_LIMITS``' keys) recorded for the device kind, else the defaults."""
  entry = tuning.tuned_entry("matmul_4bit", device_kind, "lut") or {}
  return {**DEFAULT_LIMITS, **{k: v for k, v in entry.items() if k in DEFAULT_LIMITS}}


def can_use_kernel(n: int, k: int, blocksize: int) -> bool:
  """Whole blocks per row (``K % blocksize == 0``), so K is a multiple of 8."""
  return n > 0 and k > 0 and blocksize >= 16 and k % blocksize == 0


def choose_kind(m: int, dtype, device_kind: str | None = None) -> str | None:
  """``"gemv"``, ``"mma"`` or None (dequantize + GEMM wins) for M rows of ``dtype``."""
  lim = limits(device_kind)
  if m <= min(lim["gemv_max_m"], MAX_GEMV_ROWS):
    return "gemv"
  if m <= lim["mma_max_m"] and jnp.dtype(dtype).name in lut_decode.TABLE_DTYPES:
    return "mma"
  return None


def transposed_kind(m: int, n: int, k: int, blocksize: int, dtype,
                    device_kind: str | None) -> str | None:
  """The kernel for the input gradient ``dy @ W`` of ``m`` rows: ``"gemv_t"`` up to
  ``"gemv_t_max_m"``, ``"mma_t"`` (16-bit ``dy``) up to ``"mma_t_max_m"``, else None
  (dequantize + GEMM)."""
  if not can_use_kernel(n, k, blocksize):
    return None
  lim = limits(device_kind)
  if m <= min(lim["gemv_t_max_m"], MAX_GEMV_ROWS):
    return "gemv_t"
  if m <= lim["mma_t_max_m"] and jnp.dtype(dtype).name in lut_decode.TABLE_DTYPES:
    return "mma_t"
  return None


def mma_t_config(m: int, n: int, k: int, device_kind: str | None = None) -> LutConfig:
  """Recorded transposed tensor-core config (``"lut/mma_t/<bucket>[/<N>x<K>]"``), else
  ``mma_t.DEFAULT_CONFIG``."""
  entry = _recorded("lut/" + _bucket("mma", m).replace("mma", "mma_t"), n, k, device_kind)
  return LutConfig(**entry) if entry else mma_t_lib.DEFAULT_CONFIG


def gemv_t_config(m: int, n: int, k: int, device_kind: str | None = None) -> LutConfig:
  """Recorded transposed-GEMV config (``"lut/gemv_t/<bucket>[/<N>x<K>]"``), else
  ``gemv_t.default_config(m)``."""
  entry = _recorded("lut/" + _bucket("gemv", m).replace("gemv", "gemv_t"), n, k, device_kind)
  return LutConfig(**entry) if entry else gemv_t_lib.default_config(m)


def _recorded(key: str, n: int, k: int, device_kind: str | None) -> dict | None:
  """The table's ``"<key>/<N>x<K>"`` entry for the device kind, else its ``"<key>"`` one,
  else None."""
  return (tuning.tuned_entry("matmul_4bit", device_kind, f"{key}/{n}x{k}")
          or tuning.tuned_entry("matmul_4bit", device_kind, key))


def _bucket(kind: str, m: int) -> str:
  """The M bucket of recorded configs: ``"gemv/m4"``, ``"mma/m16"``, ``"wgmma/m128"``, ..."""
  if kind == "wgmma":  # the tensor-core kind's buckets, and one more above 128 rows
    return "wgmma/m256" if m > 128 else "wgmma/" + _bucket("mma", m).split("/")[1]
  if kind == "gemv":
    return f"gemv/m{1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8}"
  return f"mma/m{16 if m <= 16 else 64 if m <= 64 else 128}"


def _resolve_kind(kind: str | None, m: int, dtype, device: str | None) -> str:
  """``kind``, or the one :func:`choose_kind` picks for M rows (``"mma"`` past both
  limits), checked against the activations' dtype."""
  if kind is None:
    kind = choose_kind(m, dtype, device) or "mma"
  if kind not in ("gemv", "mma"):
    raise ValueError(f"`kind` must be 'gemv' or 'mma', got {kind!r}.")
  if kind == "mma" and jnp.dtype(dtype).name not in lut_decode.TABLE_DTYPES:
    raise ValueError(f"The tensor-core kernel needs bfloat16 or float16 `x`, got {dtype}; "
                     f"use kind='gemv' (M <= {MAX_GEMV_ROWS}) or the dequantize route.")
  return kind


def get_config(kind: str, m: int, n: int, k: int, blocksize: int,
               device_kind: str | None = None) -> LutConfig:
  """Recorded config for the device kind and M bucket (``"lut/<bucket>"``), else H100's."""
  bucket = _bucket(kind, m)
  entry = _recorded(f"lut/{bucket}", n, k, device_kind)
  config = LutConfig(**entry) if entry else _DEFAULT_CONFIGS[bucket]
  return fit(config, m, n, k // (2 * scales_lib.chunk_bytes(blocksize)))


def matmul_lut(
    x: jax.Array,
    w: PackedWeight,
    *,
    fmt: WeightFormat,
    bias: jax.Array | None = None,
    kind: str | None = None,
    config: LutConfig | wgmma_lib.WgmmaConfig | None = None,
    implementation: str | None = None,
    interpret: bool | None = None,
) -> jax.Array:
  """``x @ W.T + bias`` with the register-table kernels (decode and small batch).

  Args:
    x: ``[M, K]`` activations (float32 only for the GEMV kernel).
    w: the packed ``W[N, K]``.
    fmt: its static format.
    bias: optional ``[N]``, added in float32.
    kind: ``"gemv"`` or ``"mma"`` (default: by M, :func:`choose_kind`; M past
      both limits still runs ``"mma"``).
    config: launch config (default: recorded for this device kind, or H100's).
      For ``"mma"`` a ``WgmmaConfig`` runs the Mosaic GPU kernel
      (``pallas_kernels._src.lut_matmul.wgmma``, sm_90 only); without a
      config it runs where its limit is recorded for the device kind
      (``"wgmma_max_m"`` in ``data/matmul_4bit.json``), else Triton's.
    implementation: None (the kernel on a GPU, else the reference), ``"xla"``
      or ``"pallas"`` (interpret mode off the GPU).
    interpret: run in the Pallas interpreter (default: off the GPU).

  Returns:
    ``[M, N]`` in ``x.dtype``. The GEMV multiplies the exact float32 weight
    (table value times scale, never rounded); the tensor-core kernel the
    weight rounded once to ``x.dtype``, as ``matmul_4bit_reference``.
  """
  check_operands(x, w, fmt, transpose=False)
  m = x.shape[0]
  n, k = w.shape
  if interpret is None:
    interpret = not common.on_gpu()
  device = None if interpret else common.device_kind()
  if kind is None and config is None and not interpret and \
      use_wgmma(m, n, k, fmt, x.dtype, device):
    kind = "mma"  # the Mosaic kernel, also below "gemv_max_m" where "wgmma_min_m" allows
  kind = _resolve_kind(kind, m, x.dtype, device)
  implementation = common.choose_implementation(
      implementation, can_use_kernel(n, k, fmt.blocksize),
      f"The register-table kernels need K divisible by the blocksize: got N={n}, K={k}, "
      f"blocksize={fmt.blocksize}.")
  if implementation == "xla":
    return lut_matmul_reference(x, w, fmt=fmt, kind=kind, bias=bias)
  if isinstance(config, wgmma_lib.WgmmaConfig) and (interpret or kind != "mma"):
    raise ValueError(f"A WgmmaConfig runs the Mosaic GPU kernel (kind='mma', an sm_90 GPU, no "
                     f"interpreter); got kind={kind!r}, interpret={interpret}.")
  if kind == "mma" and not interpret and (
      isinstance(config, wgmma_lib.WgmmaConfig)
      or (config is None and use_wgmma(m, n, k, fmt, x.dtype, device))):
    return _run_wgmma(x, w, fmt, config, bias, device)
  if config is None:
    config = get_config(kind, m, n, k, fmt.blocksize, device)
  elif not isinstance(config, LutConfig):
    raise ValueError(f"`config` must be a LutConfig for kind={kind!r} here, got {config!r}.")
  else:
    config = fit(dataclasses.replace(config, kind=kind), m, n,
                 k // (2 * scales_lib.chunk_bytes(fmt.blocksize)))
  if kind == "gemv":
    return gemv_4bit_triton(x, w, fmt=fmt, config=config, bias=bias, interpret=interpret)
  return mma_4bit_triton(x, w, fmt=fmt, config=config, bias=bias, interpret=interpret)


def _run_wgmma(x, w, fmt, config, bias, device):
  n, k = w.shape
  if not (wgmma_lib.supports(n, k, fmt, x.dtype) and wgmma_lib.available()):
    raise ValueError(
        f"The Mosaic GPU kernel needs an sm_90 GPU, N % 64 == 0, K a multiple of 64 and of "
        f"the blocksize (16 or more) and 16-bit x: got N={n}, K={k}, "
        f"blocksize={fmt.blocksize}, x {x.dtype}.")
  if config is None:
    config = _wgmma_config(x.shape[0], n, k, device)
  return wgmma_lib.wgmma_4bit(x, w, fmt=fmt, config=config, bias=bias)


def _wgmma_config(m: int, n: int, k: int, device: str | None) -> wgmma_lib.WgmmaConfig:
  """Recorded per shape, else per M bucket, else the fitted default."""
  bucket = _bucket("wgmma", m)
  entry = _recorded(bucket, n, k, device)
  return wgmma_lib.WgmmaConfig(**entry) if entry else wgmma_lib.WgmmaConfig()


def matmul_lut_group(
    x: jax.Array,
    ws: Sequence[PackedWeight],
    *,
    fmt: WeightFormat,
    biases: Sequence[jax.Array | None] | None = None,
    kind: str | None = None,
    config: LutConfig | None = None,
    implementation: str | None = None,
    interpret: bool | None = None,
) -> tuple[jax.Array, ...]:
  """``x @ W_i.T + bias_i`` for weights that share ``x``: one launch.

  The decode step's q/k/v (and gate/up) projections read one input; one launch
  for the group instead of one per weight removes the launch gaps between them.
  Same contract as :func:`matmul_lut` for each weight.

  Args:
    x: ``[M, K]`` activations.
    ws: the packed ``W_i[N_i, K]``, one static format ``fmt``.
    fmt: their format.
    biases: optional, one ``[N_i]`` or None per weight.
    kind: ``"gemv"`` or ``"mma"`` (default: by M, as :func:`matmul_lut`).
    config: launch config (default: recorded for this device kind and the
      summed N, else for the M bucket, else H100's).
    implementation, interpret: as :func:`matmul_lut`.

  Returns:
    One ``[M, N_i]`` array in ``x.dtype`` per weight.
  """
  ws, biases = check_group(x, ws, fmt, biases)
  m, k = x.shape
  if interpret is None:
    interpret = not common.on_gpu()
  device = None if interpret else common.device_kind()
  n_total = sum(w.shape[0] for w in ws)
  one_launch = (not interpret and bool(limits(device)["wgmma_group_launch"])
                and use_wgmma(m, n_total, k, fmt, x.dtype, device)
                and all(wgmma_lib.supports(w.shape[0], k, fmt, x.dtype) for w in ws))
  per_weight = not interpret and all(use_wgmma(m, w.shape[0], k, fmt, x.dtype, device)
                                     for w in ws)
  if kind is None and config is None and (one_launch or per_weight):
    kind = "mma"  # as matmul_lut
  kind = _resolve_kind(kind, m, x.dtype, device)
  if kind == "gemv" and m > MAX_GEMV_ROWS:
    raise ValueError(f"The GEMV kernel handles at most {MAX_GEMV_ROWS} rows of x, got M={m}.")
  implementation = common.choose_implementation(
      implementation, can_use_kernel(n_total, k, fmt.blocksize),
      f"The register-table kernels need K divisible by the blocksize: got K={k}, "
      f"blocksize={fmt.blocksize}.")
  if implementation == "xla":
    return tuple(lut_matmul_reference(x, w, fmt=fmt, kind=kind, bias=b)
                 for w, b in zip(ws, biases))
  if kind == "mma" and config is None and one_launch:
    # One Mosaic GPU launch for the group, configured for its summed rows (the table's
    # "wgmma/m16/6144x4096" is q+k+v's), the activations permuted once.
    return wgmma_lib.wgmma_4bit_group(x, ws, fmt=fmt,
                                      configs=_wgmma_config(m, n_total, k, device),
                                      biases=biases)
  if kind == "mma" and config is None and per_weight:
    # One Mosaic GPU launch per weight (each already fills the GPU with split-K), the
    # activations permuted once for the group.
    return wgmma_lib.wgmma_4bit_group(
        x, ws, fmt=fmt, configs=[_wgmma_config(m, w.shape[0], k, device) for w in ws],
        biases=biases)
  nc = k // (2 * scales_lib.chunk_bytes(fmt.blocksize))
  if config is None:
    config = get_config(kind, m, n_total, k, fmt.blocksize, device)
  else:
    config = fit(dataclasses.replace(config, kind=kind), m, n_total, nc)
  group = gemv_4bit_group_triton if kind == "gemv" else mma_4bit_group_triton
  return group(x, ws, fmt=fmt, config=config, biases=biases, interpret=interpret)
