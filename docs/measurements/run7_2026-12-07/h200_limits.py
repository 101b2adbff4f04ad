"""Records the H200's dispatch limits from run 7's M = 16 sweep (h200_a.sh).

The Mosaic kernel takes a weight where it measured faster than the best Triton tensor-core
config on that shape and on every larger one swept; the other limits are the H100's
crossovers (same sm_90 kernels), to be re-measured on the H200 when time allows.
  python3 h200_limits.py TABLE.json SWEEP_16_<shape>.json ...
"""
import json
import sys

table_path, sweeps = sys.argv[1], sys.argv[2:]
best = {}  # N * K -> (best Mosaic us, best Triton us, shape)
for path in sweeps:
  d = json.load(open(path))
  shape = path.rsplit("_", 1)[1][:-len(".json")]
  n, k = map(int, shape.split("x"))
  ok = [r for r in d["rows"] if r["ok"] and r["m"] == 16 and r["decode"] == "prmt"]
  w = min((r["us"] for r in ok if r["kind"] == "wgmma"), default=float("inf"))
  t = min((r["us"] for r in ok if r["kind"] == "mma"), default=float("inf"))
  best[n * k] = (w, t, shape)
  print(f"{shape}: Mosaic {w:.1f} us, Triton {t:.1f} us, bf16 {d['bf16_us']['16']:.1f} us")
min_weights = None
for size in sorted(best, reverse=True):
  if best[size][0] < best[size][1]:
    min_weights = size
  else:
    break
table = json.load(open(table_path))
lut = {"gemv_max_m": 4, "mma_max_m": 128, "wgmma_max_m": 256 if min_weights else 0,
       "wgmma_min_weights": min_weights or 0}
table.setdefault("nvidia_h200", {})["lut"] = lut
json.dump(table, open(table_path, "w"), indent=1)
open(table_path, "a").write("\n")
print("nvidia_h200 lut:", lut)
