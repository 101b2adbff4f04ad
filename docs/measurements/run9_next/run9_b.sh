# Run 9, second call (<= 590 s, H100 or H200): the transposed GEMV on the GPU (its compiled
# test cases and the dispatch test, then timings against the dequantize route and bf16), and
# whether XLA fuses an elementwise NF4 decode into its GEMM at M >= 128.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run9_next
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu_b.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 120 python3 -m pytest -q -n 4 -p no:benchmark \
  -p no:cacheprovider tests/test_lut_kernels.py > $OUT/pytest_lut.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_lut.txt; grep -E "^FAILED" $OUT/pytest_lut.txt | cut -c1-150 | head; date
timeout $(( $(left) > 240 ? 240 : $(left) )) python3 $D/gemv_t_probe.py 1,4,8 \
  8192x8192,14336x4096,4096x14336 > $OUT/gemv_t.txt 2>&1
echo gemv_t rc $?; grep -E "bf16|route|^best|WRONG|FAILED" $OUT/gemv_t.txt | cut -c1-120; date
[ $(left) -gt 40 ] && timeout $(left) python3 $D/xla_fused_probe.py 128,512,2048 8192x8192 \
  > $OUT/xla_fused.txt 2>&1
echo xla_fused rc $?; cat $OUT/xla_fused.txt | grep -v Warn | tail -14; date
