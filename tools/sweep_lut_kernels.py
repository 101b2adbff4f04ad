"""GPU sweep of the register-table 4-bit kernels against JAX bf16 (development tool).

Times each (kernel, config) on NF4 weights with float32 absmax per 64, or with
double-quantized byte codes (``--nested``, the format of bitsandbytes' NF4+DQ checkpoints;
random bytes and scales, 8 distinct weights per timed call so nothing stays in L2), checks it
against the float64 product of the weight the kernel holds, and prints one table
with JAX bf16 beside it. The runs behind docs/benchmarks.md ("How the kernels got
there") used this script on each kernel version.

  python3 tools/sweep_lut_kernels.py --shape 8192x8192 --ms 1,16 --json out.json
  python3 tools/sweep_lut_kernels.py --only 'gemv,n16,c4' --profile   # one config, for ncu
  python3 tools/sweep_lut_kernels.py --nested --shapes 28672x4096 --ms 16 --gemv '' --mma ''
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxfp4._src import formats  # noqa: E402
from jaxfp4._src.bench import time_call  # noqa: E402
from pallas_kernels import PackedWeight, WeightFormat, decode_weight_reference  # noqa: E402
from pallas_kernels._src import common  # noqa: E402
from pallas_kernels._src import lut_decode  # noqa: E402
from pallas_kernels._src.lut_matmul import api as lut_api  # noqa: E402
from pallas_kernels._src.lut_matmul import gemv as gemv_lib  # noqa: E402
from pallas_kernels._src.lut_matmul import mma as mma_lib  # noqa: E402
from pallas_kernels._src.lut_matmul import wgmma as wgmma_lib  # noqa: E402
from pallas_kernels._src.lut_matmul.config import LutConfig, fit  # noqa: E402

COPIES = 8
DATA_JSON = os.path.join(os.path.dirname(__file__), "..", "pallas_kernels", "data",
                         "matmul_4bit.json")
CPU = jax.default_backend() != "gpu"  # dry run of the script in the interpreter


def fake_decode(words, lut, element, *, table=None, interpret):
  """Integer decode (nibble - 8) instead of the shuffle: the loop's cost without the lookup."""
  shift = 8 * (element // 2) + (4 if element % 2 == 0 else 0)
  return (((words >> shift) & 0xF).astype(jnp.int32) - 8).astype(jnp.float32)


def parse_cfg(text):
  if text.startswith("{"):  # a Mosaic GPU config, as JSON
    return wgmma_lib.WgmmaConfig(**json.loads(text))
  kw = {}
  for part in text.split(","):
    key, val = part.split("=")
    kw[key] = val if key in ("kind", "decode") else int(val)
  return LutConfig(**kw)


GEMV_CFGS = [
    "kind=gemv,block_n=16,chunks=16,num_warps=4",
    "kind=gemv,block_n=16,chunks=16,num_warps=8",
    "kind=gemv,block_n=16,chunks=8,num_warps=4",
    "kind=gemv,block_n=32,chunks=16,num_warps=4",
    "kind=gemv,block_n=16,chunks=32,num_warps=8",
    "kind=gemv,block_n=8,chunks=16,num_warps=4",
    "kind=gemv,block_n=16,chunks=16,num_warps=4,prefetch=0",
    "kind=gemv,block_n=16,chunks=16,num_warps=4,groups=32",
    "kind=gemv,block_n=32,chunks=8,num_warps=4",
    "kind=gemv,block_n=16,chunks=16,num_warps=4,decode=prmt",
]
MMA_CFGS = [
    "kind=mma,block_n=64,chunks=2,num_warps=4,split_k=4",
    "kind=mma,block_n=64,chunks=4,num_warps=4,split_k=4",
    "kind=mma,block_n=64,chunks=2,num_warps=4,split_k=4,num_stages=3",
    "kind=mma,block_n=64,chunks=2,num_warps=4,split_k=8",
    "kind=mma,block_n=128,chunks=2,num_warps=8,split_k=4",
    "kind=mma,block_n=64,chunks=2,num_warps=4,split_k=2",
]
# Mosaic GPU tensor-core kernel (Hopper), M >= 5; split_k 0 lets `fit` choose.
WGMMA_CFGS = ['{}', '{"reduce": true}', '{"slab": true, "reduce": true}',
              '{"sub": 2, "reduce": true}', '{"tile_k": 256, "reduce": true}']
MMA_BIG = [
    "kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=4,split_k=4",
    "kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=4,split_k=4,num_stages=3",
    "kind=mma,block_n=128,block_m=BM,chunks=2,num_warps=8,split_k=4",
    "kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=8,split_k=4",
    "kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=4,split_k=2",
]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--shape", default="8192x8192")
  ap.add_argument("--ms", default="1,16")
  ap.add_argument("--gemv", default=";".join(GEMV_CFGS))
  ap.add_argument("--mma", default=";".join(MMA_CFGS))
  ap.add_argument("--mma-big", default=";".join(MMA_BIG),
                  help="Triton configs for M > 32 (BM: the M tile), '' to skip")
  ap.add_argument("--wgmma", default=";".join(WGMMA_CFGS),
                  help="Mosaic GPU configs as JSON objects ('' to skip; sm_90 only)")
  ap.add_argument("--decodes", default="prmt",
                  help="'prmt' times the real decode (either table), 'fake' an integer decode")
  ap.add_argument("--only", default=None, help="run one config (for ncu) and exit")
  ap.add_argument("--only-m", type=int, default=1)
  ap.add_argument("--only-decode", default="prmt")
  ap.add_argument("--json", default=None)
  ap.add_argument("--nested", action="store_true",
                  help="double-quantized byte scales (NF4+DQ) instead of float32 absmax: "
                       "run 10 found the Mosaic configs tuned on float32 scales up to 35%% "
                       "slower on NF4+DQ (the Llama decode's format)")
  ap.add_argument("--shapes", default=None,
                  help="several N x K shapes, comma-separated (overrides --shape)")
  ap.add_argument("--write-configs", default=None, metavar="OUT",
                  help="write pallas_kernels/data/matmul_4bit.json with each shape's fastest "
                       "config added (as 'lut/<kind>/m<bucket>/<N>x<K>') to OUT")
  args = ap.parse_args()
  if args.shapes:
    winners = {}
    for shape in args.shapes.split(","):
      rows = sweep_shape(args, shape)
      for m in sorted({r["m"] for r in rows}):
        for kind in ("gemv", "mma", "wgmma"):
          # Only the exact decode (shfl, the dequantized weight itself) is
          # recorded as a default; the prmt table rows are for comparison.
          best = min((r for r in rows if r["m"] == m and r["kind"] == kind
                      and r["decode"] == "prmt" and r["ok"]
                      and getattr(parse_cfg(r["cfg_text"]), "decode", "shfl") == "shfl"),
                     key=lambda r: r["us"], default=None)
          if best is not None:  # Mosaic configs live beside the "lut" ones (api._run_wgmma)
            prefix = "" if kind == "wgmma" else "lut/"
            winners[f"{prefix}{lut_api._bucket(kind, m)}/{shape}"] = best
    print("\nfastest config per shape and M bucket:")
    for key, r in winners.items():
      print(f"  {key:28s} {r['us']:7.1f} us  {r['cfg_text']}")
    if args.write_configs:
      # Several invocations can add to one file: an existing OUT is the starting point.
      table = json.loads(open(args.write_configs if os.path.exists(args.write_configs)
                              else DATA_JSON).read())
      entry = table.setdefault(common.device_kind(), {})
      for key, r in winners.items():
        cfg = parse_cfg(r["cfg_text"])
        if isinstance(cfg, wgmma_lib.WgmmaConfig) and not args.nested:
          # The sweep's weights have float32 scales. Where a CTA's byte-coded scales split
          # into few enough per thread (wgmma.coded_slab_ok), decoding them in the kernel
          # measured faster than XLA's pass (run 5: NF4 + DQ 2% behind NF4 at M = 16,
          # against 29% with XLA's decode), so the recorded entry keeps it on.
          cfg = dataclasses.replace(cfg, coded_slab=True)
        entry[key] = dataclasses.asdict(cfg)
      with open(args.write_configs, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    return
  sweep_shape(args, args.shape)


def sweep_shape(args, shape):
  """Times the configs on one ``N x K`` weight; returns the rows."""
  print("jax", jax.__version__, jax.devices()[0].device_kind, shape,
        "NF4+DQ" if args.nested else "NF4", flush=True)
  n, k = map(int, shape.split("x"))
  bs = 64
  rng = np.random.default_rng(0)
  lut = tuple(formats.NF4_CODE.tolist())
  datas = [rng.integers(0, 256, (n, k // bs, bs // 2), dtype=np.uint8) for _ in range(COPIES)]
  if args.nested:  # bitsandbytes' double quantization: scale = table[code] * group + offset
    groups = -(-n * (k // bs) // 256)
    fmt = WeightFormat(lut=lut, blocksize=bs, scale_kind="byte", nested_blocksize=256)
    table = jnp.asarray(np.linspace(-1, 1, 256, dtype=np.float32))
    ws = [PackedWeight(jnp.asarray(d), jnp.asarray(rng.integers(0, 256, (n, k // bs),
                                                                 dtype=np.uint8)),
                       table, jnp.asarray(rng.random(groups, dtype=np.float32) * 0.01 + 0.01),
                       jnp.asarray([0.03], jnp.float32)) for d in datas]
    wbytes = n * k // 2 + n * (k // bs) + 4 * groups
  else:
    fmt = WeightFormat(lut=lut, blocksize=bs)
    ws = [PackedWeight(jnp.asarray(d), jnp.asarray(rng.random((n, k // bs), dtype=np.float32)
                                                   * 0.05 + 0.01)) for d in datas]
    wbytes = n * k // 2 + n * (k // bs) * 4
  rows = []
  weights: dict = {}  # float64 W[N, K] of ws[0] per table dtype (None: the exact table)

  def exact(x, table_dtype):
    if table_dtype not in weights:  # decoded once, not per config
      f = fmt if table_dtype is None else dataclasses.replace(
          fmt, lut=tuple(float(v) for v in lut_decode.table_values(lut, table_dtype)))
      weights[table_dtype] = np.asarray(decode_weight_reference(ws[0], f, jnp.float32),
                                        np.float64)
    return np.asarray(x.astype(jnp.float32), np.float64) @ weights[table_dtype].T

  def run(kind, cfg_text, m, decode="prmt"):
    if kind == "wgmma":
      cfg = wgmma_lib.fit(parse_cfg(cfg_text), -(-m // 8) * 8, n, k)
      fn1 = lambda x, w: wgmma_lib.wgmma_4bit(x, w, fmt=fmt, config=cfg)
    elif kind == "gemv":
      cfg = fit(parse_cfg(cfg_text), m, n, k // bs)
      fn1 = lambda x, w: gemv_lib.gemv_4bit_triton(x, w, fmt=fmt, config=cfg, interpret=CPU)
      tdt = jnp.float16
    else:
      cfg = fit(parse_cfg(cfg_text), m, n, k // bs)
      fn1 = lambda x, w: mma_lib.mma_4bit_triton(x, w, fmt=fmt, config=cfg, interpret=CPU)
      tdt = jnp.bfloat16
    f = jax.jit(lambda x, ws: [fn1(x, w) for w in ws])
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
    orig = lut_decode.shfl_element
    if decode == "fake":
      lut_decode.shfl_element = fake_decode
    try:
      t = time_call(f, x, ws) / COPIES
      y = np.asarray(f(x, ws)[0].astype(jnp.float32), np.float64)
    finally:
      lut_decode.shfl_element = orig
    err = float("nan")
    if decode == "prmt":
      ref = exact(x, None if getattr(cfg, "decode", "shfl") == "shfl" else tdt)
      err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    # A fast wrong config must never be recorded: the relative error of a correct one is the
    # bf16 output rounding (measured 2.3e-3); a race in a kernel showed up as NaN (H100, M=64).
    ok = decode != "prmt" or (np.isfinite(err) and err < 1e-2)
    row = dict(kind=kind, decode=decode, m=m, cfg=cfg.name(), cfg_text=cfg_text, us=t * 1e6,
               tbps=(wbytes + m * k * 2) / t / 1e12, relerr=err, ok=bool(ok))
    rows.append(row)
    print(f"{kind:5s} {decode:6s} M={m:<4d} {cfg.name():40s} {t*1e6:8.1f} us "
          f"{row['tbps']:5.2f} TB/s  err {err:.2e}" + ("" if ok else "  WRONG: not recorded"),
          flush=True)
    return t

  if args.only:
    kind = "gemv" if "gemv" in args.only else "mma"
    run(kind, args.only, args.only_m, args.only_decode)
    return rows

  # Copy roofline: read + write of 1 GiB.
  big = jnp.asarray(rng.integers(0, 2**31, 2**20 if CPU else 2**28, dtype=np.uint32))
  tcopy = time_call(jax.jit(lambda a: a ^ 1), big)
  copy_bw = 2 * big.nbytes / tcopy
  print(f"copy roofline {copy_bw / 1e12:.3f} TB/s; 4-bit floor {wbytes / copy_bw * 1e6:.1f} us",
        flush=True)
  del big
  wb = [jnp.asarray(rng.standard_normal((n, k), dtype=np.float32) * 0.02, jnp.bfloat16)
        for _ in range(COPIES)]
  dn = (((1,), (1,)), ((), ()))
  fb = jax.jit(lambda x, ws: [jax.lax.dot_general(x, w, dn) for w in ws])
  ms = [int(v) for v in args.ms.split(",")]
  bf16 = {}
  for m in sorted(set(ms)):
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
    bf16[m] = time_call(fb, x, wb) / COPIES
    print(f"bf16  xla    M={m:<4d} {'':40s} {bf16[m]*1e6:8.1f} us", flush=True)
  del wb
  for m in ms:
    if m <= 4:
      for c in args.gemv.split(";"):
        for dec in (args.decodes.split(",") if c == GEMV_CFGS[0] else ["prmt"]):
          try:
            run("gemv", c, m, dec)
          except Exception as e:  # noqa: BLE001  (a sweep reports and goes on)
            print("FAIL gemv", c, type(e).__name__, str(e)[:300], flush=True)
    big = [c.replace("BM", str(min(m, 256 if m >= 256 else 128)))
           for c in args.mma_big.split(";") if c]
    small = [c for c in args.mma.split(";") if c]
    for c in (small if m <= 32 else big):
      try:
        run("mma", c, m)
      except Exception as e:  # noqa: BLE001
        print("FAIL mma", c, type(e).__name__, str(e)[:300], flush=True)
    for c in args.wgmma.split(";") if args.wgmma else ():  # M < 8: padded to 8 rows
      try:
        run("wgmma", c, m)
      except Exception as e:  # noqa: BLE001
        print("FAIL wgmma", c, type(e).__name__, str(e)[:300], flush=True)
  best = {}
  for r in rows:
    if r["decode"] == "prmt" and r["ok"] and (r["m"] not in best or r["us"] < best[r["m"]]["us"]):
      best[r["m"]] = r
  print("\nbest per M (us, x of JAX bf16):")
  for m, r in sorted(best.items()):
    print(f"  M={m}: {r['us']:.1f} us {r['cfg']}  {bf16[m]*1e6/r['us']:.2f}x bf16 "
          f"({bf16[m]*1e6:.1f} us)  {r['tbps']:.2f} TB/s = {100*r['tbps']*1e12/copy_bw:.0f}% copy")
  if args.json:
    path = args.json.replace(".json", f"_{shape}.json") if args.shapes else args.json
    json.dump(dict(rows=rows, bf16_us={m: v * 1e6 for m, v in bf16.items()},
                   copy_tbps=copy_bw / 1e12, device=jax.devices()[0].device_kind,
                   jax=jax.__version__), open(path, "w"), indent=1)
  return rows


if __name__ == "__main__":
  main()
