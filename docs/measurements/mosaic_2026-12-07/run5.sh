# Run 5 (third session, 2026-12-07): the split-K add-reduction and the stored-order scales
# (slab) on the GPU. From the repository root, flax wheel in .whl/:
#   bash docs/measurements/mosaic_2026-12-07/run5.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
# 1. correctness: every Mosaic variant (reduce and slab included) against the exact product
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 60 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider tests/test_wgmma_kernel.py > $OUT/pytest_gpu.txt 2>&1; echo pytest rc $?; tail -3 $OUT/pytest_gpu.txt; grep -E "^FAILED|Error" $OUT/pytest_gpu.txt | head -8
# 2. where the time goes: each XLA piece around the kernel, and the kernel alone
timeout 75 python3 docs/measurements/mosaic_2026-12-07/run5_breakdown.py > $OUT/breakdown.txt 2>&1; echo bd rc $?; grep -v Warn $OUT/breakdown.txt | tail -30
# 4. matmul_4bit through the dispatch with the candidate defaults (this machine only):
#    reduce + slab (+ coded scales) for every M bucket of the Mosaic kernel
python3 - <<'PY'
import json
from pallas_kernels._src import common
p = "pallas_kernels/data/matmul_4bit.json"; d = json.load(open(p))
e = d.setdefault(common.device_kind(), {})
if "wgmma_max_m" not in e.get("lut", {}):  # an H200: the H100's limits, for this run only
    e["lut"] = dict(d["nvidia_h100_80gb_hbm3"]["lut"])
for b in ("m16", "m64", "m128", "m256"):
    e.setdefault("wgmma/" + b, {}).update(slab=True, reduce=True, coded_slab=True)
e.setdefault("wgmma/m128/8192x8192", {"sub": 2}).update(slab=True, reduce=True, coded_slab=True)
print(common.device_kind(), e["lut"]); json.dump(d, open(p, "w"), indent=1)
PY
timeout 75 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64,128,256 --no-backward --format-types nf4+dq,fp4 --format-ms 16,128 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -30
date
