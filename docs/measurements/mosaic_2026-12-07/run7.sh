# Run 7 (fourth session, 2026-12-07): the split-K add-reduction again, now a pl.kernel writing
# into a zeroed Ref (run 5 found that JAX 0.11.2 no longer lowers a Mosaic GPU pl.pallas_call),
# and matmul_4bit with the configs this run records. From the repository root, flax wheel in
# .whl/:  bash docs/measurements/mosaic_2026-12-07/run7.sh      (about 270 s)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 70 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | head; date
W='{};{"reduce": true};{"slab": true, "reduce": true}'
timeout 90 python3 tools/sweep_lut_kernels.py --shapes 8192x8192,14336x4096,4096x4096,6144x4096 \
  --ms 16 --gemv "" --mma "" --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/" $OUT/sweep16.txt | cut -c1-120; date
timeout 40 python3 tools/sweep_lut_kernels.py --shapes 8192x8192 --ms 64 --gemv "" --mma "" --mma-big "" --wgmma "$W" \
  --write-configs $OUT/matmul_4bit.json > $OUT/sweep64.txt 2>&1
echo sweep64 rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/" $OUT/sweep64.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout 60 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 16,64 --no-backward \
  --format-types nf4+dq --format-ms 16,64,128 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -14; date
