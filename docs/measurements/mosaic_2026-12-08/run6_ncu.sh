# Run 6, third call (H100, <= 500 s): Llama-8B shapes not yet swept with the add-reduction,
# then ncu of the M = 16 kernel (default config, and slab + late slab) with fewer sections.
#   bash docs/measurements/mosaic_2026-12-08/run6_ncu.sh
D=docs/measurements/mosaic_2026-12-08
export PYTHONPATH=$PWD
W='{};{"reduce": true};{"slab": true, "late_slab": true, "reduce": true}'
timeout 110 python3 tools/sweep_lut_kernels.py --shapes 1024x4096,6144x4096,28672x4096 --ms 16 --gemv "" --mma "" \
  --mma-big "" --wgmma "$W" > $OUT/sweep16c.txt 2>&1
echo sweep16c rc $?; grep -E "^(wgmma|bf16|FAIL)|  wgmma/|WRONG" $OUT/sweep16c.txt | cut -c1-120; date
timeout 300 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section InstructionStats --launch-count 4 \
  python3 $D/ncu_wgmma.py 16 > $OUT/ncu_m16.txt 2>&1
echo ncu rc $?; grep -E "^  [a-zA-Z_]|kernel |Duration|DRAM Throughput|Issue Slots Busy|Achieved Occupancy|Eligible Warps|Registers Per|Executed Ipc A|Executed Instructions  " $OUT/ncu_m16.txt | head -40; date
