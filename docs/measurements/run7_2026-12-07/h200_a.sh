# H200, first call (<= 590 s): the GPU tests, then the sweeps that make an H200 table. Nothing
# had been recorded for the H200: the dispatch fell back to the Triton kernels there with the
# H100's default configs. Sweeps at M = 16 (Mosaic against Triton, so the size from which the
# Mosaic kernel wins is measured here, not copied from the H100) and M = 1 (GEMV) on the
# Llama-3.1-8B shapes, written to $OUT/matmul_4bit.json with the limits h200_limits.py derives.
D=docs/measurements/run7_2026-12-07
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 110 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py tests/test_lut_kernels.py tests/test_matmul_group.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | cut -c1-150 | head; date
timeout 40 python3 docs/measurements/mosaic_2026-12-07/compile_per_call_site.py > $OUT/compile.txt 2>&1
echo compile rc $?; grep calls $OUT/compile.txt; date
SH=8192x8192,28672x4096,4096x14336,6144x4096,4096x4096
S='"slab": true, "late_slab": true, "reduce": true'
timeout 200 python3 tools/sweep_lut_kernels.py --shapes $SH --ms 16 --gemv "" --mma-big "" \
  --mma "kind=mma,block_n=128,chunks=1,num_warps=8,split_k=8,prefetch=2;kind=mma,block_n=64,chunks=2,num_warps=4,split_k=4" \
  --wgmma "{\"reduce\": true};{$S}" --json /tmp/sw16.json --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep16 rc $?; grep -E "^(copy|FAIL)|  (wgmma|lut)/|M=16:|WRONG" $OUT/sweep16.txt | cut -c1-120; date
timeout 150 python3 tools/sweep_lut_kernels.py --shapes $SH --ms 1 --mma "" --mma-big "" --wgmma "" \
  --gemv "kind=gemv,block_n=16,chunks=16,num_warps=8;kind=gemv,block_n=16,chunks=16,num_warps=4,prefetch=2;kind=gemv,block_n=16,chunks=8,num_warps=4" \
  --json /tmp/sw1.json --write-configs $OUT/matmul_4bit.json > $OUT/sweep1.txt 2>&1
echo sweep1 rc $?; grep -E "^(FAIL)|  lut/|M=1:|WRONG" $OUT/sweep1.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && python3 $D/h200_limits.py $OUT/matmul_4bit.json /tmp/sw16_*.json
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
B="python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64 --no-backward --format-types nf4+dq --format-ms 16"
timeout $(( 585 - SECONDS )) $B > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -14; date
