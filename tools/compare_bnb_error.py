"""Error of jaxfp4's ``matmul_4bit`` and of bitsandbytes' on the same 4-bit weights (GPU).

bitsandbytes quantizes a random bf16 weight (NF4 / FP4, blocksize 64, with and
without double quantization) on CUDA; its bytes and state are loaded into
jaxfp4 (``QuantState.from_dict``), and both libraries multiply the same bf16
activations. Each result is compared with the exact float64 product of the
weight the bytes encode (table value x block scale, unrounded) and, second,
with the product of the dequantized weight rounded to bf16, by
``||y - ref|| / ||ref||``. Both libraries also time the product here (CUDA
events for torch, ``jaxfp4._src.bench.time_call`` for JAX; one weight, so the
4-bit weight may sit in L2: for the error, not a speed claim).

  python tools/compare_bnb_error.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="8192x8192")
  p.add_argument("--ms", default="1,2,4,16,64,128")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  import torch
  import bitsandbytes as bnb
  import bitsandbytes.functional as F
  import jax
  import jax.numpy as jnp
  import jaxfp4
  from jaxfp4._src import matmul as matmul_lib
  from jaxfp4._src import quantize as q

  n, k = (int(v) for v in args.shape.split("x"))
  torch.manual_seed(0)
  w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
  rows = []
  for quant_type in ("nf4", "fp4"):
    for nested in (False, True):
      packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type,
                                      compress_statistics=nested)
      d = {key: (v.cpu().numpy() if torch.is_tensor(v) else v)
           for key, v in state.as_dict(packed=True).items()}
      jstate = jaxfp4.QuantState.from_dict(d)
      jpacked = jnp.asarray(packed.cpu().numpy().reshape(-1))
      code = np.asarray(jstate.code, np.float64)
      scales = np.asarray(q.block_scales(jstate), np.float64)
      b = packed.cpu().numpy().reshape(-1)
      codes = np.stack([b >> 4, b & 15], axis=-1).reshape(n, k)
      w_exact = code[codes] * np.repeat(scales.reshape(n, k // 64), 64, axis=1)
      w_deq = np.asarray(jaxfp4.dequantize_4bit(jpacked, jstate).astype(jnp.float32), np.float64)
      tag = quant_type + ("+dq" if nested else "")
      for m in (int(v) for v in args.ms.split(",")):
        xt = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        x64 = xt.float().cpu().numpy().astype(np.float64)
        ref, ref_deq = x64 @ w_exact.T, x64 @ w_deq.T
        with torch.no_grad():
          yb = bnb.matmul_4bit(xt, packed.t(), quant_state=state).float().cpu().numpy()
        xj = jnp.asarray(xt.float().cpu().numpy(), jnp.bfloat16)
        route = matmul_lib._route(m, jstate, jnp.bfloat16, None, False)
        yj = np.asarray(jaxfp4.matmul_4bit(xj, jpacked, jstate).astype(jnp.float32))
        err = lambda y, r: float(np.linalg.norm(y - r) / np.linalg.norm(r))
        row = dict(format=tag, M=m, jaxfp4_route=route,
                   jaxfp4_err=err(yj, ref), bnb_err=err(yb, ref),
                   jaxfp4_err_vs_dequantized=err(yj, ref_deq),
                   bnb_err_vs_dequantized=err(yb, ref_deq))
        rows.append(row)
        print(f"{tag:7s} M={m:<4d} jaxfp4 [{route}] {row['jaxfp4_err']:.3e}  bitsandbytes "
              f"{row['bnb_err']:.3e}   (vs the bf16-dequantized product: "
              f"{row['jaxfp4_err_vs_dequantized']:.3e} / {row['bnb_err_vs_dequantized']:.3e})",
              flush=True)
  meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "bitsandbytes": bnb.__version__, "jax": jax.__version__, "shape": [n, k]}
  print(json.dumps(meta))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({**meta, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
