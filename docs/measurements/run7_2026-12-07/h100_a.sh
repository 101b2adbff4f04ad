# H100, first call (<= 590 s), most important first:
# 1. GPU tests: the jitted kernel launches (Triton GEMV and tensor-core, Mosaic), the Mosaic
#    kernel with blocks of 32 and 16 (MXFP4, NVFP4), a weight group in one Mosaic launch;
# 2. XLA compile time per call site with the jitted launches (run 6: 24 sites 5.92 s + 6.60 s);
# 3. the partial second wave at M = 16 (split-K 4/8/16, 3 steps, tile_k 64), recorded where
#    one wins ($OUT/matmul_4bit.json, copied into the table for what follows);
# 4. where a Llama-3.1-8B decode step at batch 16 goes (tools/profile_decode.py; run 6: NF4 +
#    DQ 1.31x of bf16 while the M = 16 products measured about 2x), then the same step with
#    q/k/v and gate/up each in one Mosaic launch ("wgmma_group_launch": 1 in the table, and
#    "wgmma_min_weights" lowered to q+k+v's 6144 x 4096: run 6 timed that shape at 13.4 us).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 120 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py tests/test_lut_kernels.py tests/test_matmul_group.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | cut -c1-150 | head; date
timeout 40 python3 docs/measurements/mosaic_2026-12-07/compile_per_call_site.py > $OUT/compile.txt 2>&1
echo compile rc $?; grep calls $OUT/compile.txt; date
S='"slab": true, "late_slab": true, "reduce": true'
W="{$S, \"split_k\": 4};{$S, \"split_k\": 8};{$S, \"split_k\": 16};{$S, \"split_k\": 8, \"steps\": 3};{$S, \"split_k\": 16, \"steps\": 3};{$S, \"tile_k\": 64, \"split_k\": 16}"
timeout 100 python3 tools/sweep_lut_kernels.py --shapes 8192x8192,14336x4096,4096x14336 --ms 16 --gemv "" --mma "" \
  --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep rc $?; grep -E "^(wgmma|bf16|copy|FAIL)|  wgmma/|WRONG" $OUT/sweep16.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout -s ABRT 190 python3 -X faulthandler tools/profile_decode.py --config llama_8b --variants nf4_dq,bf16 \
  --batch 16 --top 16 > $OUT/profile8b_b16.txt 2>&1
echo profile rc $?; grep -v Warning $OUT/profile8b_b16.txt | grep -v site-packages | tail -36; date
python3 - <<'PY'
import json
p = "pallas_kernels/data/matmul_4bit.json"
t = json.load(open(p))
t["nvidia_h100_80gb_hbm3"]["lut"]["wgmma_group_launch"] = 1
t["nvidia_h100_80gb_hbm3"]["lut"]["wgmma_min_weights"] = 6144 * 4096  # q+k+v summed
json.dump(t, open(p, "w"), indent=1)
PY
timeout -s ABRT $(( 588 - SECONDS )) python3 -X faulthandler tools/profile_decode.py --config llama_8b --variants nf4_dq \
  --batch 16 --top 16 > $OUT/profile8b_b16_group.txt 2>&1
echo profile rc $?; grep -v Warning $OUT/profile8b_b16_group.txt | grep -v site-packages | tail -18; date
