# Run 6 (H100, one call of <= 590 s), most important first: the split-K add-reduction and the
# late slab on the GPU (tests), their speed at M = 16 (a sweep that records configs into
# $OUT/matmul_4bit.json, copied into the table for what follows), ncu of the M = 16 kernel,
# whether XLA compiles a Mosaic kernel once per call site, and the Llama-3.1-8B decode at
# batch 16 (NF4 + DQ against bf16) with what time is left. run6_more.sh has the rest.
#   bash docs/measurements/mosaic_2026-12-08/run6.sh
D=docs/measurements/mosaic_2026-12-08
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 70 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | cut -c1-150 | head; date
W='{};{"reduce": true};{"slab": true, "reduce": true};{"slab": true, "late_slab": true, "reduce": true};{"slab": true, "late_slab": true}'
timeout 75 python3 tools/sweep_lut_kernels.py --shapes 8192x8192,14336x4096 \
  --ms 16 --gemv "" --mma "" --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep rc $?; grep -E "^(wgmma|bf16|copy|FAIL)|  wgmma/|WRONG" $OUT/sweep16.txt | cut -c1-120; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout 70 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
  --section MemoryWorkloadAnalysis --section InstructionStats --launch-count 6 \
  python3 $D/ncu_wgmma.py 16 > $OUT/ncu_m16.txt 2>&1
echo ncu rc $?; grep -E "^  [a-z_]|kernel |Duration|DRAM Throughput|Issue Slots Busy|Achieved Occupancy|Eligible Warps|Registers Per|Executed Ipc A" $OUT/ncu_m16.txt | head -30; date
timeout 45 python3 docs/measurements/mosaic_2026-12-07/compile_per_call_site.py > $OUT/compile.txt 2>&1
echo compile rc $?; grep calls $OUT/compile.txt; date
timeout -s ABRT $(( 588 - SECONDS )) python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq \
  --routes default --skip-qlora --batches 16 --repeats 2 > $OUT/llama8b.txt 2>&1
echo llama rc $?; grep -v Warning $OUT/llama8b.txt | grep -v site-packages | tail -14; date
