"""Timing of ``matmul_4bit`` against JAX bf16 and dequantize-then-dot on this device.

Bytes and FLOPs are counted first. The roofline of a row is
``max(bytes / copy bandwidth, 2*M*N*K / bf16 GEMM rate)``, both measured in the
same run (a device copy, and an 8192^3 bf16 ``dot_general``), so "% roofline"
is the fraction of what this device delivers. Each timed call runs the product
against several copies of the weight (more bytes than the L2 holds), at least 16
products below 512 rows of x, and reports the time per product.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp

from jaxfp4._src import formats
from jaxfp4._src import matmul as matmul_lib
from jaxfp4._src import product as product_lib
from jaxfp4._src import repack
from jaxfp4._src import quantize as q
from jaxfp4._src.bench import copy_bandwidths, time_call

logger = logging.getLogger("jaxfp4")

_ROTATE_BYTES = 160e6  # > 3x the 50 MB L2 of an H100


@dataclasses.dataclass(frozen=True)
class MatmulRow:
  shape: tuple[int, int]  # (N, K)
  m: int
  quant_type: str
  variant: str  # "bf16", "xla dequant+dot", "matmul_4bit [route]", "dequant kernel+dot"; "bwd",
  # "bwd: gemv_t" / "bwd: mma_t" (the transposed kernels beside the input gradient's route)
  seconds: float
  nbytes: int
  flops: int
  roofline_s: float
  bf16_s: float | None

  def as_dict(self) -> dict:
    return {"N": self.shape[0], "K": self.shape[1], "M": self.m, "quant_type": self.quant_type,
            "variant": self.variant, "us": self.seconds * 1e6, "bytes": self.nbytes,
            "TBps": self.nbytes / self.seconds / 1e12,
            "TFLOPps": self.flops / self.seconds / 1e12,
            "pct_roofline": 100 * self.roofline_s / self.seconds,
            "speedup_vs_bf16": (self.bf16_s / self.seconds) if self.bf16_s else None}


def weight_bytes(n: int, k: int, quant_type: str | None, nested: bool = False) -> int:
  if quant_type is None:
    return 2 * n * k
  fmt = formats.get_format(quant_type)
  nb = n * k // fmt.default_blocksize
  scale = 1 if nested or fmt.scale_kind != "absmax" else 4
  extra = 4 * -(-nb // 256) if nested else 0
  return n * k // 2 + nb * scale + extra


def _copies(a, count):
  """``count`` copies in distinct device buffers."""
  return [jax.tree_util.tree_map(lambda l: jnp.array(l, copy=True), a) for _ in range(count)]


# Products per timed call below 512 rows of x. Each call of a jitted function carries a
# fixed cost on the GPU; with the 2 (bf16) to 5 (NF4) weight copies of one call, the bench
# timed every route 8-12 us per product slower than the sweep tool's 8 products per call
# (H100, run 6 in docs/benchmarks.md; bf16 at M = 1 62.1 against 49.7 us).
_MIN_PRODUCTS = 16


def _time_rotating(op, x, weights, quick: bool) -> float:
  reps = len(weights) if quick or x.shape[0] >= 512 else max(len(weights), _MIN_PRODUCTS)
  # Distinct activations per product: XLA would merge two products of the same operands.
  xs = [x + jnp.asarray(i, x.dtype) for i in range(reps)]
  f = jax.jit(functools.partial(_products, op))
  kw = dict(warmup=1, batches=3, per_batch=2) if quick else dict(warmup=2, batches=7, per_batch=5)
  return time_call(f, xs, weights, **kw) / reps


def _products(op, xs, ws):
  """``op(x_i, ws[i % len(ws)])`` for every ``x_i``, each product opaque to the others.

  Products of one weight copy with different activations must not be merged: XLA's GPU
  dot merger turns bf16 dots that share an operand into one dot that reads the weight once
  (run 7: bf16 at M = 1 on 8192 x 8192 timed 17.8 us per product, 272% of the copy
  roofline, with 16 products over 2 copies), and the XLA work that prepares a 4-bit weight
  would be shared the same way. An optimization barrier per product hides that two of them
  read the same buffers; it moves no data."""
  outs = []
  for i, xi in enumerate(xs):
    xi, wi = jax.lax.optimization_barrier((xi, ws[i % len(ws)]))
    outs.append(op(xi, wi))
  return outs


def _bf16_peak(quick: bool) -> float:
  n = 1024 if quick else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype))
  return 2 * n ** 3 / time_call(f, a, a.T + 1, warmup=2, batches=5, per_batch=3)


def _fwd(x, w, implementation=None):
  packed, state = w
  return matmul_lib.matmul_4bit(x, packed, state, implementation=implementation)


def _bwd(dy, w, implementation=None):
  packed, state = w
  data = q.check_packed(packed, state)
  return product_lib.product(dy, data, state, None, implementation, transpose=True)


def _dot_bf16(x, w):
  return jnp.dot(x, w.T, preferred_element_type=jnp.float32).astype(x.dtype)


def _dot_bf16_bwd(dy, w):
  return jnp.dot(dy, w, preferred_element_type=jnp.float32).astype(dy.dtype)


def run(shapes, ms, *, quant_type="nf4", formats_shape=None, format_ms=(), format_types=(),
        backward=True, configs=None, quick=False, progress=None):
  """Times the matmul variants; returns (copy bytes/s, bf16 FLOP/s, rows).

  Args:
    shapes: ``(N, K)`` weight shapes.
    ms: token counts M.
    quant_type: the format of the main table.
    formats_shape, format_ms, format_types: extra forward rows comparing
      formats (``"nf4+dq"`` for nested) on one shape.
    backward: also time the input gradient ``dy @ W``.
    configs: optional list of kernel configs timed as extra forward rows (GPU).
    quick: few repetitions (for tests).
    progress: optional callable(str).
  """
  on_gpu = jax.default_backend() == "gpu"
  # A CPU moves ~10 GB/s and does ~0.1 TFLOP/s: GPU-sized roofline passes take minutes there.
  buf = jnp.zeros((64 if quick else 16384 if on_gpu else 1024, 8192), jnp.bfloat16)
  copy_bw = max(copy_bandwidths(buf, quick=quick).values())
  del buf
  peak = _bf16_peak(quick or not on_gpu)
  rows: list[MatmulRow] = []

  def say(s):
    if progress:
      progress(s)

  def add(shape, m, qt, variant, seconds, wbytes, bf16_s):
    n, k = shape
    nbytes = wbytes + 2 * m * (n + k)
    flops = 2 * m * n * k
    roof = max(nbytes / copy_bw, flops / peak)
    row = MatmulRow(shape, m, qt, variant, seconds, nbytes, flops, roof, bf16_s)
    rows.append(row)
    return row

  for shape in shapes:
    n, k = shape
    key = jax.random.key(n * 7 + k)
    w16 = jax.random.normal(key, (n, k), jnp.float32).astype(jnp.bfloat16)
    plan = [(quant_type, False, tuple(ms))]
    if shape == formats_shape:
      for ft in format_types:
        plan.append((ft.removesuffix("+dq"), ft.endswith("+dq"), tuple(format_ms)))
    b16 = weight_bytes(n, k, None)
    bf16_ws = _copies(w16, max(2, min(16, math.ceil(_ROTATE_BYTES / b16))))
    bf16_times = {}
    for qt, nested, qms in plan:
      tag = qt + ("+dq" if nested else "")
      packed, state = q.quantize_4bit(w16, quant_type=qt, compress_statistics=nested)
      wb = weight_bytes(n, k, qt, nested)
      ws = _copies((packed, state), max(2, min(16, math.ceil(_ROTATE_BYTES / wb))))
      main = (qt, nested) == (quant_type, False)
      repacked = None  # ws in layout "wgmma", made on first use
      for m in qms:
        x = jax.random.normal(jax.random.key(m), (m, k), jnp.bfloat16)
        dy = jax.random.normal(jax.random.key(m + 1), (m, n), jnp.bfloat16)
        if m not in bf16_times:
          say(f"{n}x{k} M={m} bf16")
          t = _time_rotating(_dot_bf16, x, bf16_ws, quick)
          tb = _time_rotating(_dot_bf16_bwd, dy, bf16_ws, quick) if backward else None
          bf16_times[m] = (t, tb)
          add(shape, m, "bf16", "bf16", t, b16, None)
          if backward:
            add(shape, m, "bf16", "bf16 bwd", tb, b16, None)
        t16, tb16 = bf16_times[m]
        say(f"{n}x{k} M={m} {tag}")
        if not main:
          add(shape, m, tag, "matmul_4bit", _time_rotating(_fwd, x, ws, quick), wb, t16)
          continue
        t = _time_rotating(functools.partial(_fwd, implementation="xla"), x, ws, quick)
        add(shape, m, tag, "xla dequant+dot", t, wb, t16)
        # On a GPU: the default dispatch (named by the route it takes) and the
        # dequantize route beside it; elsewhere matmul_4bit is the jnp path.
        routes: tuple[tuple[str | None, str], ...] = ((None, "matmul_4bit"),)
        mosaic = False
        if on_gpu:
          fwd_route = product_lib.route(m, state, x.dtype, None, False)
          mosaic = fwd_route == "mma" and _runs_mosaic(m, packed, state, x.dtype)
          name = "mma: Mosaic wgmma" if mosaic else fwd_route
          routes = ((None, f"matmul_4bit [{name}]"),)
          if fwd_route != "dequantize":
            routes += (("dequantize", "dequant kernel+dot"),)
        for route, label in routes:
          with _forced_route(route):
            add(shape, m, tag, label, _time_rotating(_fwd, x, ws, quick), wb, t16)
            if backward and route is None:
              add(shape, m, tag, "matmul_4bit bwd", _time_rotating(_bwd, dy, ws, quick), wb, tb16)
        if mosaic:  # the Triton tensor-core kernel it replaced, for comparison
          add(shape, m, tag, "mma: Triton", _safe_time(_lut_mma, x, ws, quick), wb, t16)
        if (on_gpu and fwd_route in ("gemv", "mma")
            and repack.can_repack(packed, state, "wgmma")):
          # the same weights repacked into the Mosaic decoder's K order (no permutation of x)
          if repacked is None:
            repacked = [repack.repack_4bit(p, s, layout="wgmma") for p, s in ws]
          add(shape, m, tag, "matmul_4bit [layout wgmma]",
              _safe_time(_fwd, x, repacked, quick), wb, t16)
        if main and on_gpu and backward and m <= 256:
          # The transposed kernels beside the input gradient's route, while the dispatch
          # takes them only where their limits are recorded.
          kind = "gemv_t" if m <= 8 else "mma_t"
          if product_lib.route(m, state, dy.dtype, None, True) != kind:
            t = _safe_time(functools.partial(_transposed, kind), dy, ws, quick)
            add(shape, m, tag, f"bwd: {kind}", t, wb, tb16)
        for cfg in (configs or {}).get(m, []) if main and on_gpu else []:
          t = _safe_time(_config_op(cfg, False), x, ws, quick)
          add(shape, m, tag, "cfg " + cfg.name(), t, wb, t16)
          if backward:
            t = _safe_time(_config_op(cfg, True), dy, ws, quick)
            add(shape, m, tag, "cfg bwd " + cfg.name(), t, wb, tb16)
  return copy_bw, peak, rows


@contextlib.contextmanager
def _forced_route(route: str | None):
  """Times one route of ``matmul_4bit``'s dispatch whatever it would pick (None: its own)."""
  if route is None:
    yield
    return
  original = product_lib.route
  product_lib.route = lambda *a, **k: route
  try:
    yield
  finally:
    product_lib.route = original


def _config_op(cfg, transpose):
  import pallas_kernels

  def op(x, w):
    packed, state = w
    kw, fmt = product_lib.kernel_weight(q.check_packed(packed, state), state)
    return pallas_kernels.matmul_packed(x, kw, fmt=fmt, transpose=transpose,
                                        implementation="pallas", config=cfg)
  return op


def _runs_mosaic(m, packed, state, dtype) -> bool:
  from pallas_kernels._src.lut_matmul import api as lut_api
  n, k = state.shape
  _, fmt = product_lib.kernel_weight(q.check_packed(packed, state), state)
  return lut_api.use_wgmma(m, n, k, fmt, dtype)


def _lut_mma(x, w, config=None):
  """The register-table tensor-core product with ``config``: a Triton ``LutConfig`` or a
  Mosaic ``WgmmaConfig`` (the run 10 probes); None: the Triton config recorded for the
  shape (the kernel the Mosaic route replaced)."""
  import pallas_kernels
  from pallas_kernels._src import common
  from pallas_kernels._src.lut_matmul import api as lut_api
  packed, state = w
  kw, fmt = product_lib.kernel_weight(q.check_packed(packed, state), state)
  if config is None:
    n, k = state.shape
    config = lut_api.get_config("mma", x.shape[0], n, k, fmt.blocksize, common.device_kind())
  return pallas_kernels.matmul_lut(x, kw, fmt=fmt, kind="mma", config=config,
                                   implementation="pallas")


def _transposed(kind, dy, w):
  packed, state = w
  return product_lib.transposed_product(kind, dy, q.check_packed(packed, state), state)


def _safe_time(op, x, ws, quick):
  try:
    return _time_rotating(op, x, ws, quick)
  except Exception as e:  # a config that fails to compile is reported, not fatal
    logger.warning("config failed: %s", repr(e)[:300])
    return float("inf")


def format_table(copy_bw: float, peak: float, rows: list[MatmulRow]) -> str:
  # Units follow the device's roofline: TB/s and TFLOP/s on a GPU, GB/s and
  # GFLOP/s on a CPU (where the tera columns would read 0.00).
  big_bw, big_flops = copy_bw >= 1e12, peak >= 1e12
  bw_unit, bw_scale = ("TB/s", 1.0) if big_bw else ("GB/s", 1e3)
  fl_unit, fl_scale = ("TFLOP/s", 1.0) if big_flops else ("GFLOP/s", 1e3)
  lines = [f"roofline: copy {copy_bw / 1e9:.0f} GB/s (read + write), bf16 GEMM "
           f"{peak / 1e9:.0f} GFLOP/s (square bf16 dot_general), both measured in this run",
           f"{'N x K':<12}{'M':>6}  {'format':<8}{'variant':<28}{'us':>9}{bw_unit:>8}"
           f"{fl_unit:>9}{'% roof':>8}{'vs bf16':>9}"]
  for r in rows:
    d = r.as_dict()
    sp = f"{d['speedup_vs_bf16']:.2f}x" if d["speedup_vs_bf16"] else ""
    bw, fl = d["TBps"] * bw_scale, d["TFLOPps"] * fl_scale
    lines.append(f"{f'{r.shape[0]}x{r.shape[1]}':<12}{r.m:>6}  {r.quant_type:<8}"
                 f"{r.variant:<28}{d['us']:>9.1f}{bw:>8.2f}{fl:>9.1f}"
                 f"{d['pct_roofline']:>7.1f}%{sp:>9}")
  return "\n".join(lines)
