# Prepared for the next GPU session (not run yet). From the repository root on an H100, with the
# flax wheel in .whl/ (see the device README):
#   bash docs/measurements/mosaic_2026-12-07/next_gpu_run.sh        (about 590 s)
# It answers what run 5 left open (docs/benchmarks.md, "Runs 5-8"):
#  1. the split-K add-reduction, rewritten as pl.kernel into a zeroed Ref after run 5 found that
#     JAX 0.11.2 no longer lowers a Mosaic GPU pl.pallas_call: its GPU tests, and its speed at
#     M = 16 and 64 against the XLA sum of the partial tiles (configs recorded into a copy);
#  2. matmul_4bit with those configs, NF4 + DQ included (in-kernel scale decode capped at 16
#     codes per thread);
#  3. whether XLA compiles a Mosaic kernel once per call site (a reason the 8B decode may not
#     have finished in runs 2-3);
#  4. the Llama-3.1-8B decode at batches 16 and 1 with the recorded dispatch, bf16 in the same run.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
left() { echo $(( ${1} - SECONDS )); }
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 60 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | head; date
W='{};{"reduce": true};{"slab": true, "reduce": true}'
timeout 90 python3 tools/sweep_lut_kernels.py --shapes 8192x8192,14336x4096,4096x14336,4096x4096 \
  --ms 16 --gemv "" --mma "" --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/" $OUT/sweep16.txt | cut -c1-120
timeout 40 python3 tools/sweep_lut_kernels.py --shapes 8192x8192 --ms 64 --gemv "" --mma "" --mma-big "" --wgmma "$W" \
  --write-configs $OUT/matmul_4bit.json > $OUT/sweep64.txt 2>&1
echo sweep64 rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/" $OUT/sweep64.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout 60 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 16,64 --no-backward \
  --format-types nf4+dq --format-ms 16,64,128 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -9
timeout 60 python3 docs/measurements/mosaic_2026-12-07/compile_per_call_site.py > $OUT/compile.txt 2>&1
echo compile rc $?; grep calls $OUT/compile.txt; date
timeout -s ABRT $(left 585) python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants nf4_dq,bf16 \
  --routes default --skip-qlora --batches 16,1 --repeats 2 > $OUT/llama8b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b.txt | grep -v site-packages | tail -12; date
