# Run 9 (one call, <= 590 s, H100 or H200): the Llama-3.1-8B NF4+DQ decode at batch 16, the
# bitsandbytes bytes against the same weights repacked into the Mosaic decoder's K order
# (nf4_dq_wgmma), under the tables of tables.py in separate processes on one machine (t0
# committed, t1 + the H200 gates, t2 + transpose_out, t3 + post_scale on every Mosaic config),
# bf16 in the same run, a second round of the A/B and batch 1. Each step runs only while the
# call has time left. run9_c.sh: M = 2 and 4, formats, the decode profile.
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
# nf4_dq_wgmma: the same weights repacked at load time into the Mosaic decoder's K order
# (jaxfp4.nnx.repack_model): no activation permutation per Mosaic launch
decode t0 nf4_dq 16; decode t0 nf4_dq_wgmma 16; decode t2 nf4_dq_wgmma 16
decode t1 nf4_dq_wgmma 16; decode t0 bf16 16; decode t3 nf4_dq_wgmma 16
decode t0 nf4_dq_wgmma 16; decode t0 nf4_dq 16; decode t0 nf4_dq_wgmma 1; decode t0 nf4_dq 1
date
