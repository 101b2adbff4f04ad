python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl .whl/bitsandbytes*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm --format=csv > $OUT/gpu.txt
timeout 150 python3 gpu_scratch/bench_mgpu.py check > $OUT/mgpu_check.txt 2>&1; echo check rc $?; grep -E "CHECK|Error|error:" $OUT/mgpu_check.txt | head -20
grep -q "CHECK 256x512" $OUT/mgpu_check.txt && (timeout 200 python3 gpu_scratch/bench_mgpu.py bench 8192x8192,4096x4096 16,128 > $OUT/mgpu_bench.txt 2>&1; echo bench rc $?; grep -E "BEST|BENCH" $OUT/mgpu_bench.txt)
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider tests/test_matmul.py tests/test_matmul_group.py tests/test_lut_kernels.py tests/test_gptq.py > $OUT/pytest_gpu.txt 2>&1; tail -3 $OUT/pytest_gpu.txt
