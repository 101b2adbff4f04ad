# Run 6b (H100, ~560 s): does XLA compile a Mosaic kernel once per call site, then the
# Llama-3.1-8B decode (NF4 + DQ against bf16) at batches 16 and 1 with the recorded dispatch.
# Run after run6a on the same machine, with run6a's recorded table copied in by the caller
# (or the committed one).
#   bash docs/measurements/mosaic_2026-12-08/run6b.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
date
timeout 50 python3 docs/measurements/mosaic_2026-12-07/compile_per_call_site.py > $OUT/compile.txt 2>&1
echo compile rc $?; grep calls $OUT/compile.txt; date
timeout -s ABRT $(( 585 - SECONDS )) python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants nf4_dq,bf16 \
  --routes default --skip-qlora --batches 16,1 --repeats 2 > $OUT/llama8b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b.txt | grep -v site-packages | tail -14; date
