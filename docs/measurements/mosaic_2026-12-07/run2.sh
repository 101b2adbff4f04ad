# Run 2 (2026-12-07, second session; it ran on an H100 as written here, steps 2-3 and 5-6 hit their time limits).
# From the repository root on the device, with the flax wheel in .whl/ (see the device README):
#   bash docs/measurements/mosaic_2026-12-07/run2.sh   (run 2 of this folder; prepared as next_gpu_run.sh)
# Step 0 turns the Mosaic kernel on for this device kind in the working copy only
# (pallas_kernels/data/matmul_4bit.json, "wgmma_max_m"); record it in the repository only if
# the tests pass and the sweep shows the kernel ahead of the Triton one.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
python3 - <<'PY'
import json
from pallas_kernels._src import common
p = "pallas_kernels/data/matmul_4bit.json"; d = json.load(open(p))
d.setdefault(common.device_kind(), {}).setdefault("lut", {"gemv_max_m": 4, "mma_max_m": 128})["wgmma_max_m"] = 128
json.dump(d, open(p, "w"), indent=1); print("wgmma on for", common.device_kind())
PY
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 150 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider tests/test_wgmma_kernel.py tests/test_lut_kernels.py tests/test_matmul.py tests/test_matmul_group.py > $OUT/pytest_gpu.txt 2>&1; tail -4 $OUT/pytest_gpu.txt; grep -E "^FAILED|Error" $OUT/pytest_gpu.txt | head -5
W='{};{"slab":false};{"sub":2};{"overlap":true}'
timeout 110 python3 tools/sweep_lut_kernels.py --shape 8192x8192 --ms 16,64,128,256 --gemv "" --mma "kind=mma,block_n=128,chunks=2,num_warps=8,split_k=4" --mma-big "kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=4,split_k=2" --wgmma "$W" --json $OUT/sweep8192.json > $OUT/sweep8192.txt 2>&1; echo s1 rc $?; grep -A6 "best per M" $OUT/sweep8192.txt
W2='{};{"sub":2};{"tile_k":256}'
timeout 100 python3 tools/sweep_lut_kernels.py --shapes 4096x4096,1024x4096,14336x4096,4096x14336,2048x2048,512x2048,8192x2048,2048x8192 --ms 16 --gemv "" --mma "" --mma-big "" --wgmma "$W2" --write-configs $OUT/matmul_4bit.json > $OUT/sweep_llama.txt 2>&1; echo s2 rc $?; grep -A10 "fastest config" $OUT/sweep_llama.txt
mkdir -p $OUT/sass; MOSAIC_GPU_DUMP_SASS=1 MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_TO=$OUT/sass timeout 60 python3 gpu_scratch/sass_dump.py > $OUT/sass_run.txt 2>&1; echo sass rc $?; tail -3 $OUT/sass_run.txt; ls $OUT/sass | head
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout 90 python3 tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq --routes default --skip-qlora --batches 16 --repeats 3 > $OUT/llama8b_b16.txt 2>&1; echo b8 rc $?; tail -5 $OUT/llama8b_b16.txt
timeout 45 python3 tools/bench_llama.py --config llama_1b --variants bf16,nf4_dq --routes default --skip-qlora --batches 16 --repeats 3 > $OUT/llama1b_b16.txt 2>&1; echo b1 rc $?; tail -5 $OUT/llama1b_b16.txt
date; echo ALLDONE
