# Run 9, second call (LIMIT seconds): JAX bf16 decode in the same machine as run9_first.sh,
# post_scale against the recorded configs (kernel level), the Triton tensor-core kernel's M =
# 64/128 configs, the transposed kernels against dequantize + GEMM, and the decode with
# post_scale (t3) if the first call's tests passed (POST=1).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run9_next; T=pallas_kernels/data/matmul_4bit.json
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu_second.txt; date
python3 $D/tables.py $OUT
timeout -s ABRT 100 python3 tools/bench_llama.py --config llama_8b --variants bf16 --routes default \
  --skip-qlora --batches 1,16 --new 64 --repeats 3 2>&1 | grep -E "decode|^#" | tee $OUT/decode_bf16.txt
date
S='"slab": true, "late_slab": true, "reduce": true'
W="{$S};{$S, \"post_scale\": true};{$S, \"split_k\": 8, \"steps\": 3};{$S, \"split_k\": 8, \"steps\": 3, \"post_scale\": true}"
[ $(left) -gt 100 ] && timeout 95 python3 tools/sweep_lut_kernels.py \
  --shapes 8192x8192,28672x4096,4096x14336 --ms 16 --gemv "" --mma "" --mma-big "" \
  --wgmma "$W" > $OUT/sweep_post.txt 2>&1
grep -E "^(copy|bf16|FAIL)|^wgmma|WRONG" $OUT/sweep_post.txt | cut -c1-120; date
M="kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=4,split_k=2;kind=mma,block_n=128,block_m=BM,chunks=1,num_warps=8,split_k=2;kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=8,split_k=2"
[ $(left) -gt 100 ] && timeout 80 python3 tools/sweep_lut_kernels.py --shapes 4096x4096,8192x8192 \
  --ms 128 --gemv "" --mma "" --wgmma "" --mma-big "$M" > $OUT/sweep_mma128.txt 2>&1
grep -E "^(copy|bf16|FAIL)|M=128|WRONG" $OUT/sweep_mma128.txt | cut -c1-120; date
[ $(left) -gt 100 ] && timeout $(( $(left) > 150 ? 150 : $(left) - 30 )) python3 \
  $D/transposed_probe.py 1,16,64,256 8192x8192 nf4+dq > $OUT/transposed.txt 2>&1
grep -E "bf16|route|^best|WRONG|FAILED" $OUT/transposed.txt | cut -c1-120; date
if [ "${POST:-0}" = 1 ] && [ $(left) -gt 70 ]; then
  cp $OUT/t3.json $T
  timeout -s ABRT $(( $(left) - 5 )) python3 tools/bench_llama.py --config llama_8b \
    --variants nf4_dq_wgmma --routes default --skip-qlora --batches 16 --new 64 --repeats 3 \
    2>&1 | grep -E "decode|^#" | sed "s/^/t3: /" | tee $OUT/decode_t3.txt
  cp $OUT/t0.json $T
fi
date
