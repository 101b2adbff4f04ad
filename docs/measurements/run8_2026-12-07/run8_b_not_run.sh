# Run 8, second call (H100, <= 590 s), run8_a's table copied in first: where the Llama-3.1-8B
# decode step at batch 16 goes now (run 7: 6.15 ms, 0.7 ms of small XLA kernels, 1.07 ms of
# gaps), then the decode at batches 1 and 16 against bf16 in the same run.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s ABRT 200 python3 -X faulthandler tools/profile_decode.py --config llama_8b --variants nf4_dq,bf16 \
  --batch 16 --top 16 > $OUT/profile8b_b16.txt 2>&1
echo profile rc $?; grep -v Warning $OUT/profile8b_b16.txt | grep -v site-packages | tail -36; date
timeout -s ABRT $(( 585 - SECONDS )) python3 -X faulthandler tools/bench_llama.py --config llama_8b \
  --variants bf16,nf4_dq --routes default --skip-qlora --batches 1,16 --repeats 2 > $OUT/llama8b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b.txt | grep -v site-packages | tail -8; date
