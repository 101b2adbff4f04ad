# Run 10, fourth call: the GPU tests of the Mosaic kernel with late_slab ignored for
# double-quantized codes, then the Llama-8B NF4+DQ decode at batch 16 with that change and
# the gate/up group's split-K 8 ("new") against the committed kernel and table ("old", from
# gpu_scratch/old), in the order new, old, old, new; then the GEMV groups of batch 1.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
D=docs/measurements/run10; L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
rm -rf /tmp/old && mkdir /tmp/old && cp -r jaxfp4 pallas_kernels tools /tmp/old/
cp gpu_scratch/old/wgmma.py gpu_scratch/old/wgmma_config.py /tmp/old/pallas_kernels/_src/lut_matmul/
cp gpu_scratch/old/matmul_4bit.json /tmp/old/pallas_kernels/data/
nvidia-smi --query-gpu=name --format=csv,noheader; date
PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 120 python3 -m pytest -q -n 4 \
  -p no:benchmark -p no:cacheprovider tests/test_wgmma_kernel.py > $OUT/pytest_d.txt 2>&1
echo pytest rc $?; tail -1 $OUT/pytest_d.txt; grep -E "^FAILED" $OUT/pytest_d.txt | cut -c1-160 | head; date
dec() {  # tree label
  [ $(left) -lt 70 ] && return
  (cd $1 && PYTHONPATH=/tmp/site:$PWD timeout -s ABRT 90 python3 tools/bench_llama.py \
    --config llama_8b --variants nf4_dq --routes default --skip-qlora --batches 16 --new 64 \
    --repeats 3 2>&1 | grep -E "decode|Error" | sed "s/^/$2: /" | tee -a $OUT/decode_d.txt)
}
dec $PWD new; dec /tmp/old old; dec /tmp/old old; dec $PWD new
[ $(left) -gt 40 ] && PYTHONPATH=/tmp/site:$PWD timeout $(( $(left) - 5 )) python3 $D/group_probe.py 1 \
  2>&1 | grep -v -i warn | tee $OUT/group1.txt
date
[ $(left) -gt 40 ] && PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false timeout $(( $(left) - 5 )) \
  python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider tests/test_lut_kernels.py \
  -k "transposed or gemv_t or input_gradient" > $OUT/pytest_gemv_t.txt 2>&1
echo pytest gemv_t rc $?; tail -1 $OUT/pytest_gemv_t.txt; grep -E "^FAILED" $OUT/pytest_gemv_t.txt | cut -c1-160 | head; date
