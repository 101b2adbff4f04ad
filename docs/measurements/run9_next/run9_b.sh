# Run 9, first call (<= 590 s, H100 or H200): the kernels written without a GPU since run 8.
# 1. GPU tests: WgmmaConfig(post_scale) against its contract, the transposed GEMV and
#    tensor-core kernel (gemv_t, mma_t) and their dispatch, with everything the files had.
# 2. post_scale against the recorded configs at M = 8 and 16 (kernel level).
# 3. The transposed kernels against the dequantize route and bf16, then whether XLA fuses an
#    elementwise NF4 decode into its GEMM at M >= 128.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run9_next
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu_b.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 160 python3 -m pytest -q -n 4 -p no:benchmark \
  -p no:cacheprovider tests/test_wgmma_kernel.py tests/test_lut_kernels.py tests/test_kernel_layout.py > $OUT/pytest_b.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_b.txt; grep -E "^FAILED" $OUT/pytest_b.txt | cut -c1-150 | head; date
S='"slab": true, "late_slab": true, "reduce": true'
W="{$S};{$S, \"post_scale\": true};{$S, \"split_k\": 8, \"steps\": 3};{$S, \"split_k\": 8, \"steps\": 3, \"post_scale\": true}"
timeout $(( $(left) > 110 ? 110 : $(left) )) python3 tools/sweep_lut_kernels.py \
  --shapes 8192x8192,28672x4096,4096x14336 --ms 8,16 --gemv "" --mma "" --mma-big "" \
  --wgmma "$W" > $OUT/sweep_post.txt 2>&1
echo sweep rc $?; grep -E "^(copy|bf16|FAIL)|^wgmma|WRONG" $OUT/sweep_post.txt | cut -c1-120; date
[ $(left) -gt 100 ] && timeout $(( $(left) > 170 ? 170 : $(left) - 60 )) python3 \
  $D/transposed_probe.py 1,4,16,64,256 8192x8192 nf4,nf4+dq > $OUT/transposed.txt 2>&1
grep -E "bf16|route|^best|WRONG|FAILED" $OUT/transposed.txt | cut -c1-120; date
[ $(left) -gt 40 ] && timeout $(left) python3 $D/xla_fused_probe.py 128,512,2048 8192x8192 \
  > $OUT/xla_fused.txt 2>&1
grep -v Warn $OUT/xla_fused.txt | tail -14; date
