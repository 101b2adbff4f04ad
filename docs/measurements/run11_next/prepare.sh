# Run locally (not on the device) before run11.sh: the committed kernel and table as they
# were before run 10's changes (commit 9fb68bf), for the A/B, into gpu_scratch/old (carried).
set -e
mkdir -p gpu_scratch/old
for f in pallas_kernels/_src/lut_matmul/wgmma.py pallas_kernels/_src/lut_matmul/wgmma_config.py \
         pallas_kernels/data/matmul_4bit.json; do
  git show 9fb68bf:$f > gpu_scratch/old/$(basename $f)
done
ls -l gpu_scratch/old
# The wheels the device lacks, kept out of git (carry: [".whl", "gpu_scratch"] for run11.sh,
# run11_b.sh and run11_d.sh; [".whl", ".whl_bnb"] for run11_c.sh: bitsandbytes is 43 MB of the
# 64 MiB carry limit).
printf '/.whl/\n/.whl_bnb/\n/gpu_scratch/\n' >> .git/info/exclude
pip download -q flax==0.12.10 --no-deps --python-version 3.12 --only-binary=:all: -d .whl
pip download -q bitsandbytes==0.50.2 --no-deps --platform manylinux_2_24_x86_64 \
  --python-version 3.12 --only-binary=:all: -d .whl_bnb
ls -l .whl .whl_bnb
