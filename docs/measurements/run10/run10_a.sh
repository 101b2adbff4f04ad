# Run 10, first call (<= 590 s, H100 or H200): the GPU tests of the kernel files (the GEMV's
# in-register move of x for a repacked weight has never run on a GPU), the NF4+DQ gap at
# M = 16 (dq_probe.py), then the Llama-3.1-8B decode: NF4+DQ on bitsandbytes' bytes, the
# same weights repacked (nf4_dq_wgmma), and JAX bf16, batch 1 and 16, one process.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run10
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu_a.txt; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 170 python3 -m pytest -q -n 4 -p no:benchmark \
  -p no:cacheprovider tests/test_kernel_layout.py tests/test_wgmma_kernel.py \
  tests/test_lut_kernels.py > $OUT/pytest_a.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_a.txt; grep -E "^FAILED" $OUT/pytest_a.txt | cut -c1-160 | head -20; date
timeout 130 python3 $D/dq_probe.py 16 8192x8192,4096x14336,28672x4096,6144x4096 > $OUT/dq_probe.txt 2>&1
echo probe rc $?; grep -v -i warn $OUT/dq_probe.txt | tail -70; date
[ $(left) -gt 60 ] && timeout -s ABRT $(( $(left) - 5 )) python3 tools/bench_llama.py \
  --config llama_8b --variants nf4_dq,nf4_dq_wgmma,bf16 --routes default --skip-qlora \
  --batches 1,16 --new 64 --repeats 3 2>&1 | grep -E "decode|^#|^nf4|^bf16|Error" | tee $OUT/decode_a.txt
date
