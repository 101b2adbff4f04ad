# Run 11, fourth call (<= 590 s, H100; carry [".whl"]): the two large-M and backward questions
# that no GPU has answered yet.
# 1. Does XLA fuse an elementwise NF4 decode into its GEMM (run9_next/xla_fused_probe.py)? The
#    dequantize route is 0.64-0.70x of bf16 at M = 512 (the bf16 weight's round trip through
#    HBM); a fused decode could reach the 0.95x target without a new kernel.
# 2. The transposed kernels against the dequantize route and bf16 at M = 1-256
#    (run9_next/transposed_probe.py): the input gradient dy @ W is dequantize + GEMM at every M
#    today (0.41-0.52x of bf16 up to M = 256). mma_t passed its GPU tests in run 9; gemv_t's
#    rows come out marked WRONG if it still fails.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
N=docs/measurements/run9_next
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt; date
for shape in 8192x8192 14336x4096; do
  [ $(left) -gt 60 ] && timeout $(( $(left) > 200 ? 200 : $(left) - 20 )) python3 \
    $N/xla_fused_probe.py 128,512,2048 $shape 2>&1 | grep -v -i warn | tee -a $OUT/xla_fused.txt
done; date
[ $(left) -gt 60 ] && timeout $(( $(left) - 5 )) python3 $N/transposed_probe.py 2>&1 \
  | grep -v -i warn | tee $OUT/transposed.txt; date
