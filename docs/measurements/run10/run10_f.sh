# Run 10, last call (~390 s of device time left, start included): the GPU tests of the
# changed kernels (Mosaic: late_slab ignored for double-quantized codes; gemv_t: the table
# read in the words' registers), then the Llama-8B NF4+DQ batch-16 decode with both changes.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
L=${LIMIT:-190}; left() { echo $(( L - SECONDS )); }
nvidia-smi --query-gpu=name --format=csv,noheader; date
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 95 python3 -m pytest -q -n 4 -p no:benchmark \
  -p no:cacheprovider tests/test_wgmma_kernel.py tests/test_lut_kernels.py \
  -k "wgmma or transposed or gemv_t or input_gradient" > $OUT/pytest_f.txt 2>&1
echo pytest rc $?; tail -1 $OUT/pytest_f.txt; grep -E "^FAILED" $OUT/pytest_f.txt | cut -c1-160 | head; date
[ $(left) -gt 60 ] && timeout -s ABRT $(( $(left) - 3 )) python3 tools/bench_llama.py \
  --config llama_8b --variants nf4_dq,bf16 --routes default --skip-qlora --batches 16 --new 64 \
  --repeats 3 2>&1 | grep -E "decode|Error|^#" | tee $OUT/decode_f.txt
date
