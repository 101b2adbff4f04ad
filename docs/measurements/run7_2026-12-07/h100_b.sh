# H100, second call (<= 590 s), with what next_gpu_run.sh recorded copied into the tree first:
# 1. where a Llama-3.1-8B decode step at batch 16 goes (NF4 + DQ at 1.31x of bf16 in run 6,
#    while the M = 16 products measured about 2x; tools/profile_decode.py);
# 2. jaxfp4 bench with the new harness (>= 16 products per timed call) at M = 1, 16, 64, with
#    MXFP4 and NVFP4 on their current route (Triton) beside NF4, then again with the Mosaic
#    kernel allowed for blocks of 32 and 16 (wgmma_min_blocksize 16 in the table);
# 3. the Llama-3.2-1B-shaped decode at batches 1 and 16 (NF4 + DQ against bf16, same run).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s ABRT 200 python3 -X faulthandler tools/profile_decode.py --config llama_8b --variants nf4_dq,bf16 \
  --batch 16 --top 18 --json $OUT/profile8b_b16.json > $OUT/profile8b_b16.txt 2>&1
echo profile rc $?; grep -v Warning $OUT/profile8b_b16.txt | grep -v site-packages | tail -42; date
timeout 110 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64 \
  --no-backward --format-types nf4+dq,mxfp4,nvfp4 --format-ms 16,64 > $OUT/bench.txt 2>&1
echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -24; date
cp pallas_kernels/data/matmul_4bit.json /tmp/table.json
python3 - <<'PY'
import json
p = "pallas_kernels/data/matmul_4bit.json"
t = json.load(open(p))
t["nvidia_h100_80gb_hbm3"]["lut"]["wgmma_min_blocksize"] = 16
json.dump(t, open(p, "w"), indent=1)
PY
timeout 80 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 16 \
  --no-backward --format-types mxfp4,nvfp4 --format-ms 16,64 > $OUT/bench_small_blocks.txt 2>&1
echo bench rc $?; grep -v Warn $OUT/bench_small_blocks.txt | tail -12; date
cp /tmp/table.json pallas_kernels/data/matmul_4bit.json
timeout -s ABRT $(( 585 - SECONDS )) python3 -X faulthandler tools/bench_llama.py --config llama_1b --variants bf16,nf4_dq \
  --routes default --skip-qlora --batches 1,16 --repeats 2 > $OUT/llama1b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama1b.txt | grep -v site-packages | tail -10; date
