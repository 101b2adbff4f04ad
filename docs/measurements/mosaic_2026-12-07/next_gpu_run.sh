# Prepared for the next GPU session (not run yet). From the repository root on an H100, with the
# flax wheel in .whl/ (see the device README):
#   bash docs/measurements/mosaic_2026-12-07/next_gpu_run.sh
# It answers what runs 2-4 left open (docs/benchmarks.md, "Runs 2-4"):
#  1. the two GPU test cases that replaced the `overlap` ones (M = 128 sub 2; M = 64 sub 2 slab fp16);
#  2. the Llama-3.1-8B decode at batch 16 with the recorded dispatch (Mosaic for gate/up/down),
#     bf16 in the same run, with build and first-call (compile) times printed;
#  3. the slab scale path against the default, and Mosaic against Triton at 8192 x 4096 and
#     4096 x 8192 (between the sizes measured to lose and to win: where "wgmma_min_weights" belongs).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 90 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider tests/test_wgmma_kernel.py tests/test_lut_kernels.py > $OUT/pytest_gpu.txt 2>&1; echo pytest rc $?; tail -3 $OUT/pytest_gpu.txt; grep -E "^FAILED" $OUT/pytest_gpu.txt | head -5
timeout 300 python3 tools/bench_llama.py --config llama_8b --variants nf4_dq,bf16 --routes default --skip-qlora --batches 16 --repeats 2 > $OUT/llama8b_b16.txt 2>&1; echo b8 rc $?; grep -v Warning $OUT/llama8b_b16.txt | tail -5
timeout 130 python3 tools/sweep_lut_kernels.py --shapes 8192x4096,4096x8192,8192x8192 --ms 16 --gemv "" --mma "kind=mma,block_n=128,chunks=2,num_warps=8,split_k=4" --mma-big "" --wgmma '{};{"slab":true}' > $OUT/sweep_threshold.txt 2>&1; echo s rc $?; grep -A2 "best per M" $OUT/sweep_threshold.txt
date
