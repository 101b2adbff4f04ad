"""Side-by-side timing of bitsandbytes' ``matmul_4bit`` (torch) on the shapes of ``jaxfp4 bench``.

Needs torch with CUDA and bitsandbytes (optional; not a jaxfp4 dependency).
Same protocol as ``jaxfp4 bench``: weights rotated over more memory than the
L2 holds, median of timed repetitions after warm-up, time per product.

Usage: python tools/bench_bnb_matmul.py [--ms 1,16,128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default="4096x4096,8192x8192,14336x4096,4096x14336",
                 help="weight shapes N x K")
  p.add_argument("--ms", default="1,2,4,8,16,32,64,128,512,2048,8192", help="token counts M")
  p.add_argument("--json", default=None, help="write the numbers here")
  args = p.parse_args(argv)
  import torch
  import bitsandbytes as bnb
  import bitsandbytes.functional as F

  dev = torch.device("cuda")
  rows = []

  def timed(fn, reps=20, warm=3):
    for _ in range(warm):
      fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
      a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      a.record()
      fn()
      b.record()
      torch.cuda.synchronize()
      samples.append(a.elapsed_time(b) / 1e3)
    return statistics.median(samples)

  for shape in args.shapes.split(","):
    n, k = (int(v) for v in shape.lower().split("x"))
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    r16 = max(2, min(16, math.ceil(160e6 / (2 * n * k))))
    w16 = [w.clone() for _ in range(r16)]
    quant = {}
    for nested in (False, True):
      packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                      compress_statistics=nested)
      r4 = max(2, min(16, math.ceil(160e6 / (n * k * (0.5 + (1 if nested else 4) / 64)))))
      quant[nested] = [(packed.clone(), state) for _ in range(r4)]
    for m in (int(v) for v in args.ms.split(",")):
      x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
      with torch.no_grad():
        t16 = timed(lambda: [x @ c.t() for c in w16]) / r16
        rows.append(dict(N=n, K=k, M=m, variant="torch bf16", us=t16 * 1e6))
        for nested, copies in quant.items():
          t = timed(lambda: [bnb.matmul_4bit(x, p_.t(), quant_state=s_) for p_, s_ in copies])
          t /= len(copies)
          rows.append(dict(N=n, K=k, M=m, variant="bnb nf4" + ("+dq" if nested else ""),
                           us=t * 1e6, speedup_vs_torch_bf16=t16 / t))
      print(f"{n}x{k} M={m}: " + ", ".join(
          f"{r['variant']} {r['us']:.1f} us" for r in rows[-3:]), flush=True)
  meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "bitsandbytes": bnb.__version__}
  print(json.dumps(meta))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({**meta, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
