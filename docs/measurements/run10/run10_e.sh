# Run 10, fourth call as it ran (run10_d.sh shortened, ~560 s of device time were left): the
# GPU tests of the Mosaic kernel (late_slab ignored for double-quantized codes) and of the
# transposed GEMV (table read in the words' registers), then the Llama-8B NF4+DQ decode at
# batch 16 with the change and the gate/up split-K 8 ("new") against the committed kernel
# and table ("old"), new, old, new; then the batch-1 GEMV groups if time is left.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
D=docs/measurements/run10; L=${LIMIT:-330}; left() { echo $(( L - SECONDS )); }
rm -rf /tmp/old && mkdir /tmp/old && cp -r jaxfp4 pallas_kernels tools /tmp/old/
cp gpu_scratch/old/wgmma.py gpu_scratch/old/wgmma_config.py /tmp/old/pallas_kernels/_src/lut_matmul/
cp gpu_scratch/old/matmul_4bit.json /tmp/old/pallas_kernels/data/
nvidia-smi --query-gpu=name --format=csv,noheader; date
PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 100 python3 -m pytest -q -n 4 \
  -p no:benchmark -p no:cacheprovider tests/test_wgmma_kernel.py tests/test_lut_kernels.py \
  -k "wgmma or transposed or gemv_t or input_gradient or Wgmma" > $OUT/pytest_e.txt 2>&1
echo pytest rc $?; tail -1 $OUT/pytest_e.txt; grep -E "^FAILED" $OUT/pytest_e.txt | cut -c1-160 | head; date
dec() {  # tree label
  [ $(left) -lt 60 ] && return
  (cd $1 && PYTHONPATH=/tmp/site:$PWD timeout -s ABRT 80 python3 tools/bench_llama.py \
    --config llama_8b --variants nf4_dq --routes default --skip-qlora --batches 16 --new 64 \
    --repeats 3 2>&1 | grep -E "decode|Error" | sed "s/^/$2: /" | tee -a $OUT/decode_e.txt)
}
dec $PWD new; dec /tmp/old old; dec $PWD new
[ $(left) -gt 40 ] && PYTHONPATH=/tmp/site:$PWD timeout $(( $(left) - 5 )) python3 $D/group_probe.py 1 \
  2>&1 | grep -v -i warn | tee $OUT/group1.txt
date
