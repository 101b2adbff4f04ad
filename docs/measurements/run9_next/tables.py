"""Run 9: table variants for the decode A/B, written next to the committed table.
  python3 docs/measurements/run9_next/tables.py OUTDIR
t0: as committed; t1: t0 + the H200 gates measured on the H100 in run 7 (weight groups in one
Mosaic launch, scale blocks of 16 and 32 on the Mosaic kernel); t2: t1 + every recorded Mosaic
config writing its output as [M, N] (WgmmaConfig.transpose_out), which removes XLA's transpose
of each Mosaic output; t3: t2 + WgmmaConfig.post_scale on every Mosaic config (each block's
float32 sum scaled instead of every weight).
"""
import copy
import json
import sys

out = sys.argv[1]
t0 = json.load(open("pallas_kernels/data/matmul_4bit.json"))
t1 = copy.deepcopy(t0)
t1["nvidia_h200"]["lut"].update(wgmma_group_launch=1, wgmma_min_blocksize=16)
t2 = copy.deepcopy(t1)
for dev in t2.values():
  for key, entry in dev.items():
    if key.startswith("wgmma/"):
      entry["transpose_out"] = True
t3 = copy.deepcopy(t2)
for dev in t3.values():
  for key, entry in dev.items():
    if key.startswith("wgmma/"):
      entry["post_scale"] = True
for name, t in (("t0", t0), ("t1", t1), ("t2", t2), ("t3", t3)):
  json.dump(t, open(f"{out}/{name}.json", "w"), indent=1)
