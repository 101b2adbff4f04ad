# H100, second call (<= 590 s), with the table h100_a.sh left (sweep winners; the group launch
# kept only if it won there) copied into the tree first:
# 1. jaxfp4 bench with the new harness (>= 16 products per timed call) at M = 1, 16, 64, with
#    MXFP4 and NVFP4 on their current route (Triton) beside NF4 and NF4 + DQ;
# 2. MXFP4 and NVFP4 again with the Mosaic kernel allowed for blocks of 32 and 16
#    ("wgmma_min_blocksize": 16 in the table, for this step only);
# 3. the Llama-3.1-8B decode at batches 1 and 16, NF4 + DQ against bf16 in the same run.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 120 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64 \
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
timeout -s ABRT $(( 588 - SECONDS )) python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq \
  --routes default --skip-qlora --batches 1,16 --repeats 2 > $OUT/llama8b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b.txt | grep -v site-packages | tail -10; date
