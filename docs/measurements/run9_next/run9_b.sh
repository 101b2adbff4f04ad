# Run 9, second call (<= 590 s, H100 or H200): the transposed kernels on the GPU (gemv_t and
# mma_t: their compiled test cases and the dispatch test, then timings against the dequantize
# route and bf16), and
# whether XLA fuses an elementwise NF4 decode into its GEMM at M >= 128.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run9_next
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu_b.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 120 python3 -m pytest -q -n 4 -p no:benchmark \
  -p no:cacheprovider tests/test_lut_kernels.py > $OUT/pytest_lut.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_lut.txt; grep -E "^FAILED" $OUT/pytest_lut.txt | cut -c1-150 | head; date
timeout $(( $(left) > 150 ? 150 : $(left) )) python3 $D/transposed_probe.py 1,4,16,64,256 \
  8192x8192 nf4,nf4+dq > $OUT/transposed.txt 2>&1
echo transposed rc $?; grep -E "bf16|route|^best|WRONG|FAILED" $OUT/transposed.txt | cut -c1-120
[ $(left) -gt 150 ] && timeout $(( $(left) > 150 ? 150 : $(left) - 60 )) python3 \
  $D/transposed_probe.py 1,16,128 14336x4096,4096x14336 nf4 > $OUT/transposed2.txt 2>&1
grep -E "bf16|route|^best|WRONG|FAILED" $OUT/transposed2.txt | cut -c1-120; date
[ $(left) -gt 40 ] && timeout $(left) python3 $D/xla_fused_probe.py 128,512,2048 8192x8192 \
  > $OUT/xla_fused.txt 2>&1
echo xla_fused rc $?; cat $OUT/xla_fused.txt | grep -v Warn | tail -14; date
