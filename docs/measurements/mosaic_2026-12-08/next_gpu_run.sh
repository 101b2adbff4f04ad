# Prepared for the next GPU session (not run yet). From the repository root on an H100, with the
# flax wheel in .whl/ (see the device README):
#   bash docs/measurements/mosaic_2026-12-08/next_gpu_run.sh        (about 590 s)
# It answers what run 6 left open (docs/benchmarks.md, "Run 6"):
#  1. the GPU tests of the kernels whose launches became jax.jit functions (Triton GEMV and
#     tensor-core kernels, Mosaic kernel);
#  2. whether XLA's compile time per call site falls with them (run 6: 24 call sites of one
#     Mosaic kernel took 5.92 s to lower and 6.60 s to compile);
#  3. the partial second wave ncu found at M = 16 (1,024 CTAs, 5 per SM): split-K 4, 8 and 16,
#     pipeline depths 3 and 4, and tile_k 64 (fewer operand registers, so more CTAs per SM),
#     with slab + late_slab + reduce, recorded where one wins;
#  4. the Llama-3.1-8B decode at batches 16 and 1 with those configs and the first-call time;
#  5. NF4 + DQ at M = 64 with the in-kernel scale decode under late_slab (CODED_PER_THREAD_LATE).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 110 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py tests/test_lut_kernels.py tests/test_matmul_group.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | cut -c1-150 | head; date
timeout 40 python3 docs/measurements/mosaic_2026-12-07/compile_per_call_site.py > $OUT/compile.txt 2>&1
echo compile rc $?; grep calls $OUT/compile.txt; date
S='"slab": true, "late_slab": true, "reduce": true'
W="{$S, \"split_k\": 4};{$S, \"split_k\": 8};{$S, \"split_k\": 16};{$S, \"split_k\": 4, \"steps\": 3};{$S, \"split_k\": 8, \"steps\": 3};{$S, \"split_k\": 16, \"steps\": 3};{$S, \"tile_k\": 64, \"split_k\": 8};{$S, \"tile_k\": 64, \"split_k\": 16}"
timeout 120 python3 tools/sweep_lut_kernels.py --shapes 8192x8192,14336x4096,4096x14336 --ms 16 --gemv "" --mma "" \
  --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep rc $?; grep -E "^(wgmma|bf16|copy|FAIL)|  wgmma/|WRONG" $OUT/sweep16.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout -s ABRT $(( 480 - SECONDS )) python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq \
  --routes default --skip-qlora --batches 16,1 --repeats 2 > $OUT/llama8b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b.txt | grep -v site-packages | tail -8; date
# 5. NF4 + DQ at M = 64 (12% behind NF4 in run 6: 32 scale codes per thread, XLA decodes them):
#    the table's M = 64 entry as is, then with the in-kernel decode during the first copies.
B="python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 64 --no-backward --format-types nf4+dq --format-ms 64"
timeout 50 $B > $OUT/bench_dq64.txt 2>&1; echo bench rc $?; grep -E "nf4|bf16  " $OUT/bench_dq64.txt | grep -v Warn | tail -4
python3 - <<'PY'
import json
p = "pallas_kernels/data/matmul_4bit.json"
t = json.load(open(p))
t["nvidia_h100_80gb_hbm3"]["wgmma/m64/8192x8192"] = {"slab": True, "late_slab": True, "coded_slab": True}
json.dump(t, open(p, "w"), indent=1)
PY
timeout $(( 590 - SECONDS )) $B > $OUT/bench_dq64_late.txt 2>&1; echo bench rc $?; grep -E "nf4|bf16  " $OUT/bench_dq64_late.txt | grep -v Warn | tail -4; date
