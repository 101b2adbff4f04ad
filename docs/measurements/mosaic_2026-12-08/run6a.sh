# Run 6a (H100, ~420 s): the split-K add-reduction and the late slab on the GPU (tests), their
# speed (sweeps that record configs into $OUT/matmul_4bit.json), ncu of the M = 16 kernel,
# then matmul_4bit through the dispatch with the recorded configs.
#   bash docs/measurements/mosaic_2026-12-08/run6a.sh
D=docs/measurements/mosaic_2026-12-08
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 70 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider \
  tests/test_wgmma_kernel.py > $OUT/pytest_gpu.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | cut -c1-150 | head; date
W='{};{"reduce": true};{"slab": true, "reduce": true};{"slab": true, "late_slab": true, "reduce": true};{"slab": true, "late_slab": true}'
timeout 120 python3 tools/sweep_lut_kernels.py --shapes 8192x8192,14336x4096,4096x14336,4096x4096 \
  --ms 16 --gemv "" --mma "" --mma-big "" --wgmma "$W" --write-configs $OUT/matmul_4bit.json > $OUT/sweep16.txt 2>&1
echo sweep rc $?; grep -E "^(wgmma|bf16|copy|FAIL)|  wgmma/|WRONG" $OUT/sweep16.txt | cut -c1-120
timeout 50 python3 tools/sweep_lut_kernels.py --shapes 8192x8192 --ms 64 --gemv "" --mma "" --mma-big "" --wgmma "$W" \
  --write-configs $OUT/matmul_4bit.json > $OUT/sweep64.txt 2>&1
echo sweep64 rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/|WRONG" $OUT/sweep64.txt | cut -c1-120; date
timeout 60 python3 tools/sweep_lut_kernels.py --shape 8192x8192 --ms 1 --gemv "kind=gemv,block_n=16,chunks=16,num_warps=8;kind=gemv,block_n=16,chunks=16,num_warps=8,prefetch=2;kind=gemv,block_n=16,chunks=16,num_warps=8,prefetch=3;kind=gemv,block_n=16,chunks=8,num_warps=8,prefetch=2;kind=gemv,block_n=32,chunks=8,num_warps=8,prefetch=2" \
  --decodes prmt --mma "" --mma-big "" --wgmma '{"reduce": true};{"slab": true, "late_slab": true, "reduce": true}' > $OUT/sweep1.txt 2>&1
echo sweep1 rc $?; grep -E "^(wgmma|gemv|bf16|FAIL)|WRONG" $OUT/sweep1.txt | cut -c1-120; date
timeout 80 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
  --section MemoryWorkloadAnalysis --section InstructionStats --launch-count 6 \
  python3 $D/ncu_wgmma.py 16 > $OUT/ncu_m16.txt 2>&1
echo ncu rc $?; grep -E "^  [a-z_]|kernel |Duration|DRAM Throughput|Issue Slots Busy|Achieved Occupancy|Eligible Warps|Registers Per|Executed Ipc A|Stall" $OUT/ncu_m16.txt | head -40; date
[ -f $OUT/matmul_4bit.json ] && cp $OUT/matmul_4bit.json pallas_kernels/data/matmul_4bit.json
timeout 70 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 1,16,64 --no-backward \
  --format-types nf4+dq --format-ms 16,64 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -12; date
