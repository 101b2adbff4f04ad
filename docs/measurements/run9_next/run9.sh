# Run 9 (one call, <= 590 s, H100 or H200): the Llama-3.1-8B NF4+DQ decode at batch 16 under
# four tables in separate processes on one machine (tables.py: t0 committed, t1 + the H200
# gates, t2 + transpose_out, t3 + post_scale on every Mosaic config), bf16 in the same run;
# then M = 2 and 4
# on the GEMV against the Mosaic kernel (padded to 8 rows), and MXFP4/NVFP4 through the
# dispatch with t1. Each step runs only while the call has time left.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run9_next; T=pallas_kernels/data/matmul_4bit.json
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt; date
python3 $D/tables.py $OUT
L=${LIMIT:-585}  # seconds this call may run
left() { echo $(( L - SECONDS )); }
decode() {  # table variant batches
  [ $(left) -lt 50 ] && return
  cp $OUT/$1.json $T
  timeout -s ABRT $(( $(left) > 100 ? 100 : $(left) )) python3 tools/bench_llama.py \
    --config llama_8b --variants $2 --routes default --skip-qlora --batches $3 --new 64 \
    --repeats 3 2>&1 | grep -E "decode|^#" | sed "s/^/$1 $2: /" | tee -a $OUT/decode.txt
}
decode t1 nf4_dq 16; decode t2 nf4_dq 16; decode t3 nf4_dq 16; decode t0 nf4_dq 16
decode t0 bf16 16
date
S='"slab": true, "late_slab": true, "reduce": true'
cp $OUT/t0.json $T
[ $(left) -gt 60 ] && timeout $(( $(left) > 100 ? 100 : $(left) )) python3 tools/sweep_lut_kernels.py \
  --shapes 8192x8192,4096x14336,28672x4096 --ms 2,4 --mma "" --mma-big "" \
  --gemv "kind=gemv,block_n=16,chunks=16,num_warps=4;kind=gemv,block_n=16,chunks=16,num_warps=8" \
  --wgmma "{$S};{$S, \"split_k\": 8}" > $OUT/sweep24.txt 2>&1
grep -E "^(copy|bf16|FAIL)|M=[24]|WRONG" $OUT/sweep24.txt | cut -c1-120; date
cp $OUT/t1.json $T
[ $(left) -gt 40 ] && timeout $(left) python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 \
  --ms 16 --no-backward --format-types mxfp4,nvfp4 --format-ms 16,64 > $OUT/bench_t1.txt 2>&1
grep -v Warn $OUT/bench_t1.txt | grep -v "bench:" | tail -10; date
decode t0 nf4_dq 16; decode t2 nf4_dq 16
date
