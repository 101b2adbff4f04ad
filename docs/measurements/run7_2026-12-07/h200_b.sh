# H200, second call (<= 590 s), with the table h200_a.sh recorded copied into the tree first:
# Llama-3.1-8B decode (NF4 + DQ against bf16 in the same run) at batches 1 and 16, then where
# the batch-16 step goes (tools/profile_decode.py).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s ABRT 380 python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq \
  --routes default --skip-qlora --batches 1,16 --repeats 2 > $OUT/llama8b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b.txt | grep -v site-packages | tail -10; date
timeout -s ABRT $(( 585 - SECONDS )) python3 -X faulthandler tools/profile_decode.py --config llama_8b \
  --variants nf4_dq,bf16 --batch 16 --top 18 --json $OUT/profile8b_b16.json > $OUT/profile8b_b16.txt 2>&1
echo profile rc $?; grep -v Warning $OUT/profile8b_b16.txt | grep -v site-packages | tail -42; date
