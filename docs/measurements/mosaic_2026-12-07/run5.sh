# Run 5 (fourth session, 2026-12-07): the new Mosaic options on the GPU: split-K partials added
# by a TMA reduction (reduce), stored-order scales (slab), byte-coded/nested scales decoded in
# the kernel (coded_slab); the fastest config per shape recorded, and matmul_4bit through the
# dispatch with those configs. From the repository root, flax wheel in .whl/:
#   bash docs/measurements/mosaic_2026-12-07/run5.sh      (about 580 s)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
T=${T:-585}  # the whole run, seconds
left() { echo $(( ${1} * T / 585 - SECONDS )); }  # seconds left until second $1 (of a 585 s run)
# 1. correctness: every Mosaic variant, the dispatch and the groups against the exact product
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout $(left 170) python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py tests/test_lut_kernels.py tests/test_matmul.py tests/test_matmul_group.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -3 $OUT/pytest_gpu.txt; grep -E "^FAILED|^ERROR" $OUT/pytest_gpu.txt | head -12; date
# 2. Mosaic configs on 8192 x 8192 per M bucket; the fastest correct one written to a copy of the table
W='{};{"reduce": true};{"slab": true, "reduce": true};{"sub": 2, "reduce": true}'
timeout $(left 290) python3 tools/sweep_lut_kernels.py --shapes 8192x8192 --ms 16,64,128,256 --gemv "" --mma "" --mma-big "" \
  --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep8192.txt 2>&1; echo sweep rc $?
grep -E "^(wgmma|bf16|copy|FAIL)|  wgmma/" $OUT/sweep8192.txt | cut -c1-150; date
# 3. matmul_4bit through the dispatch with the recorded configs (this machine's copy only); byte-coded
#    scales decoded in the kernel wherever a Mosaic config applies
python3 - <<'PY'
import json, os
from pallas_kernels._src import common
p, rec = "pallas_kernels/data/matmul_4bit.json", os.environ["OUT"] + "/matmul_4bit.json"
d = json.load(open(rec if os.path.exists(rec) else p))
e = d.setdefault(common.device_kind(), {})
if "wgmma_max_m" not in e.get("lut", {}):  # an H200: the H100's limits, for this run only
    e["lut"] = dict(d["nvidia_h100_80gb_hbm3"]["lut"])
for key in [k for k in e if k.startswith("wgmma/")] + ["wgmma/m16", "wgmma/m64", "wgmma/m128", "wgmma/m256"]:
    e.setdefault(key, {})["coded_slab"] = True
print(common.device_kind(), e["lut"], {k: v for k, v in e.items() if k.startswith("wgmma")})
json.dump(d, open(p, "w"), indent=1)
PY
timeout $(( 100 * T / 585 )) python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64,128,256 --no-backward \
  --format-types nf4+dq,fp4 --format-ms 16,128 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -30; date
# 4. the Llama-3.1-8B shapes at M = 16 (adds to the same table copy)
timeout $(left 520) python3 tools/sweep_lut_kernels.py --shapes 14336x4096,4096x14336,4096x4096,1024x4096,6144x4096,28672x4096 \
  --ms 16 --gemv "" --mma "" --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep8b.txt 2>&1
echo sweep8b rc $?; grep -E "^(wgmma|bf16|FAIL|jax)|  wgmma/" $OUT/sweep8b.txt | cut -c1-150; date
# 5. where the time goes (the pieces around the kernel; NF4 + DQ with the in-kernel scale decode)
timeout $(left 585) python3 docs/measurements/mosaic_2026-12-07/run5_breakdown.py > $OUT/breakdown.txt 2>&1; echo bd rc $?
grep -v Warn $OUT/breakdown.txt | tail -30; date
