# Run 5 (third session, 2026-12-07): the split-K add-reduction and the stored-order scales
# (slab) on the GPU. From the repository root, flax wheel in .whl/:
#   bash docs/measurements/mosaic_2026-12-07/run5.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
# 1. correctness: every Mosaic variant (reduce and slab included) against the exact product
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 100 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider tests/test_wgmma_kernel.py tests/test_lut_kernels.py > $OUT/pytest_gpu.txt 2>&1; echo pytest rc $?; tail -3 $OUT/pytest_gpu.txt; grep -E "^FAILED|Error" $OUT/pytest_gpu.txt | head -8
# 2. where the time goes: each XLA piece around the kernel, and the kernel alone
timeout 90 python3 docs/measurements/mosaic_2026-12-07/run5_breakdown.py > $OUT/breakdown.txt 2>&1; echo bd rc $?; grep -v Warn $OUT/breakdown.txt | tail -30
# 3. the sweep: Triton, the GEMV (M = 1) and Mosaic configs with and without reduce/slab,
#    8192^2 at M = 1-128, then the Llama-3.1-8B shapes at M = 16; winners -> $OUT/matmul_4bit.json
W='{};{"reduce":true};{"slab":true,"reduce":true};{"sub":2,"reduce":true}'
timeout 150 python3 tools/sweep_lut_kernels.py --shapes 8192x8192 --ms 1,16,64,128 --gemv "kind=gemv,block_n=16,chunks=16,num_warps=8" --mma "kind=mma,block_n=128,chunks=2,num_warps=8,split_k=4" --mma-big "kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=4,split_k=2" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep8192.txt 2>&1; echo s1 rc $?; grep -v Warn $OUT/sweep8192.txt | grep -E " us|M=|wgmma/" | grep -v "^bf16" | tail -40
timeout 110 python3 tools/sweep_lut_kernels.py --shapes 14336x4096,4096x14336,4096x4096,1024x4096 --ms 16 --gemv "" --mma "kind=mma,block_n=128,chunks=2,num_warps=8,split_k=4" --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep_llama.txt 2>&1; echo s2 rc $?; grep -v Warn $OUT/sweep_llama.txt | grep -E " us|M=|wgmma/" | tail -40
# 4. matmul_4bit through the dispatch, with the configs just recorded (this machine only)
cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json && python3 - <<'PY'
import json
from pallas_kernels._src import common
p = "pallas_kernels/data/matmul_4bit.json"; d = json.load(open(p))
e = d.setdefault(common.device_kind(), {})
if "wgmma_max_m" not in e.get("lut", {}):  # an H200: the H100's limits, for this run only
    e["lut"] = dict(d["nvidia_h100_80gb_hbm3"]["lut"])
for key, cfg in e.items():  # nested scales decoded in the kernel wherever the slab is read
    if key.startswith("wgmma/") and cfg.get("slab"):
        cfg["coded_slab"] = True
print(common.device_kind(), e["lut"]); json.dump(d, open(p, "w"), indent=1)
PY
timeout 80 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64,128,256 --no-backward --format-types nf4+dq,fp4 --format-ms 16,128 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -30
date
