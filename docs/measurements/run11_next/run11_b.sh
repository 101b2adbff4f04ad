# Run 11, second call (<= 590 s, H100): the Mosaic kernel's M = 8 and 16 configs swept on
# NF4+DQ (the decode's format; `--nested`), not on float32 scales as every earlier sweep did,
# for the Llama-8B launches (q/k/v group 6144, o 4096, gate/up group 28672, down 4096 x 14336).
# The fastest config per shape goes under "wgmma/m<bucket>/<N>x<K>" by hand (or
# --write-configs), after the A/B of run11.sh.
export PYTHONPATH=$PWD
S='"slab": true, "coded_slab": true, "reduce": true, "transpose_out": true'
W=""
for sk in 2 4 8 16; do for st in 3 4; do
  W="$W;{$S, \"split_k\": $sk, \"steps\": $st}"
done; done
W="${W#;};{$S, \"split_k\": 8, \"sub\": 2};{$S, \"split_k\": 8, \"tile_k\": 256}"
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout ${LIMIT:-585} python3 tools/sweep_lut_kernels.py --nested \
  --shapes 28672x4096,6144x4096,4096x14336,4096x4096 --ms 16,8 --gemv "" --mma "" --mma-big "" \
  --wgmma "$W" > $OUT/sweep_nested.txt 2>&1
echo rc $?; grep -E "^(copy|bf16|FAIL)|fastest|wgmma/|WRONG" $OUT/sweep_nested.txt | cut -c1-130; date
