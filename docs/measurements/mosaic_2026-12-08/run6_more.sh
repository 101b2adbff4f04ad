# Run 6, continued (H100, <= 590 s): the other Llama-8B shapes and M = 64 (sweeps that add to
# the recorded table), M = 1 (Triton GEMV configs against the Mosaic kernel padded to 8 rows),
# matmul_4bit through the dispatch, and the 8B decode at batch 1.
#   bash docs/measurements/mosaic_2026-12-08/run6_more.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
date
W='{};{"reduce": true};{"slab": true, "reduce": true};{"slab": true, "late_slab": true, "reduce": true};{"slab": true, "late_slab": true}'
timeout 100 python3 tools/sweep_lut_kernels.py --shapes 4096x14336,4096x4096 --ms 16 --gemv "" --mma "" --mma-big "" \
  --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16b.txt 2>&1
echo sweep16b rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/|WRONG" $OUT/sweep16b.txt | cut -c1-120
timeout 50 python3 tools/sweep_lut_kernels.py --shapes 8192x8192 --ms 64 --gemv "" --mma "" --mma-big "" --wgmma "$W" \
  --write-configs $OUT/matmul_4bit.json > $OUT/sweep64.txt 2>&1
echo sweep64 rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/|WRONG" $OUT/sweep64.txt | cut -c1-120; date
timeout 60 python3 tools/sweep_lut_kernels.py --shape 8192x8192 --ms 1 --gemv "kind=gemv,block_n=16,chunks=16,num_warps=8;kind=gemv,block_n=16,chunks=16,num_warps=8,prefetch=2;kind=gemv,block_n=16,chunks=8,num_warps=8,prefetch=2;kind=gemv,block_n=32,chunks=8,num_warps=8,prefetch=2" \
  --decodes prmt --mma "" --mma-big "" --wgmma '{"reduce": true};{"slab": true, "late_slab": true, "reduce": true}' > $OUT/sweep1.txt 2>&1
echo sweep1 rc $?; grep -E "^(wgmma|gemv|bf16|FAIL)|WRONG" $OUT/sweep1.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout 70 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64 --no-backward \
  --format-types nf4+dq --format-ms 16,64 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -12; date
timeout -s ABRT $(( 588 - SECONDS )) python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq \
  --routes default --skip-qlora --batches 1 --repeats 2 > $OUT/llama8b_b1.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b_b1.txt | grep -v site-packages | tail -14; date
