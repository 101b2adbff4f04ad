# Run 8, first call (H100, <= 590 s), most important first:
# 1. GPU tests: WgmmaConfig(transpose_out) (written in run 7's session, never run), the
#    offset operand (branch next/offset-operand), and everything the Mosaic kernel had;
# 2. M = 16 with and without transpose_out on the shapes a Llama-3.1-8B step runs on the
#    Mosaic kernel (the recorded configs otherwise), winners written to $OUT/matmul_4bit.json;
# 3. jaxfp4 bench with its products behind optimization barriers (run 7's bf16 rows were
#    merged by XLA): the first valid numbers of the 16-products harness, formats included.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 130 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py tests/test_lut_kernels.py tests/test_matmul_group.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | cut -c1-150 | head; date
S='"slab": true, "late_slab": true, "reduce": true'
W="{$S, \"split_k\": 16};{$S, \"split_k\": 16, \"transpose_out\": true};{$S};{$S, \"transpose_out\": true};{$S, \"split_k\": 8, \"steps\": 3};{$S, \"split_k\": 8, \"steps\": 3, \"transpose_out\": true}"
timeout 170 python3 tools/sweep_lut_kernels.py --shapes 8192x8192,6144x4096,28672x4096,4096x14336 --ms 16 \
  --gemv "" --mma "" --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep rc $?; grep -E "^(wgmma|bf16|copy|FAIL)|  wgmma/|WRONG" $OUT/sweep16.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout 150 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64 \
  --no-backward --format-types nf4+dq,mxfp4,nvfp4 --format-ms 16,64 > $OUT/bench.txt 2>&1
echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -24; date
# 4. M = 64 with the in-kernel scale decode under late_slab (64 codes per thread at split-K 2;
#    run 7: MXFP4 66.9 us against NF4 44.2, its scales decoded by XLA into float32 instead).
python3 - <<'PY'
import json
p = "pallas_kernels/data/matmul_4bit.json"
t = json.load(open(p))
t["nvidia_h100_80gb_hbm3"]["wgmma/m64/8192x8192"].update(slab=True, late_slab=True, coded_slab=True)
json.dump(t, open(p, "w"), indent=1)
PY
timeout $(( 588 - SECONDS )) python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 64 \
  --no-backward --format-types nf4+dq,mxfp4,nvfp4 --format-ms 64 > $OUT/bench_m64_late.txt 2>&1
echo bench rc $?; grep -v Warn $OUT/bench_m64_late.txt | tail -8; date
