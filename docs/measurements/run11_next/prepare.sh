# Run locally (not on the device) before run11.sh: the committed kernel and table as they
# were before run 10's changes (commit 9fb68bf), for the A/B, into gpu_scratch/old (carried).
set -e
mkdir -p gpu_scratch/old
for f in pallas_kernels/_src/lut_matmul/wgmma.py pallas_kernels/_src/lut_matmul/wgmma_config.py \
         pallas_kernels/data/matmul_4bit.json; do
  git show 9fb68bf:$f > gpu_scratch/old/$(basename $f)
done
ls -l gpu_scratch/old
