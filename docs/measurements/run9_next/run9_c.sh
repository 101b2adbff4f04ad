# Run 9, third call (<= 590 s, H100 or H200): M = 2 and 4 on the GEMV against the Mosaic kernel
# (padded to 8 rows), the Triton tensor-core kernel's M = 64/128 configs, the batch-16 decode
# profile of the bitsandbytes bytes against the repacked ones (kernel count per step), and
# MXFP4/NVFP4 through the dispatch with t1.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run9_next; T=pallas_kernels/data/matmul_4bit.json
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu_c.txt; date
python3 $D/tables.py $OUT
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
S='"slab": true, "late_slab": true, "reduce": true'
cp $OUT/t0.json $T
[ $(left) -gt 60 ] && timeout $(( $(left) > 100 ? 100 : $(left) )) python3 tools/sweep_lut_kernels.py \
  --shapes 8192x8192,4096x14336,28672x4096 --ms 2,4 --mma "" --mma-big "" \
  --gemv "kind=gemv,block_n=16,chunks=16,num_warps=4;kind=gemv,block_n=16,chunks=16,num_warps=8" \
  --wgmma "{$S};{$S, \"split_k\": 8}" > $OUT/sweep24.txt 2>&1
grep -E "^(copy|bf16|FAIL)|M=[24]|WRONG" $OUT/sweep24.txt | cut -c1-120; date
# The Triton tensor-core kernel at M = 64 and 128 (no recorded config: the defaults): offline
# SASS shows the M = 128 default (block_n=64, block_m=128, 4 warps) spilling (536 bytes of
# stack, 187 LDL per loop body, 15 instructions per weight); block_n=128, chunks=1, 8 warps:
# no spills, 7.8 per weight.
M="kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=4,split_k=2;kind=mma,block_n=128,block_m=BM,chunks=1,num_warps=8,split_k=2;kind=mma,block_n=64,block_m=BM,chunks=2,num_warps=8,split_k=2;kind=mma,block_n=128,block_m=BM,chunks=2,num_warps=8,split_k=4"
[ $(left) -gt 100 ] && timeout 90 python3 tools/sweep_lut_kernels.py --shapes 4096x4096,8192x8192 \
  --ms 64,128 --gemv "" --mma "" --wgmma "" --mma-big "$M" > $OUT/sweep_mma128.txt 2>&1
grep -E "^(copy|bf16|FAIL)|M=(64|128)|WRONG" $OUT/sweep_mma128.txt | cut -c1-120; date
[ $(left) -gt 130 ] && timeout $(( $(left) > 220 ? 220 : $(left) - 20 )) python3 \
  tools/profile_decode.py --config llama_8b --variants nf4_dq,nf4_dq_wgmma --batch 16 \
  --top 14 > $OUT/profile16.txt 2>&1
grep -v Warn $OUT/profile16.txt | cut -c1-150; date
cp $OUT/t1.json $T
[ $(left) -gt 40 ] && timeout $(left) python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 \
  --ms 16 --no-backward --format-types mxfp4,nvfp4 --format-ms 16,64 > $OUT/bench_t1.txt 2>&1
grep -v Warn $OUT/bench_t1.txt | grep -v "bench:" | tail -10; date
