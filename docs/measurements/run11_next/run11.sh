# Run 11 (one call, <= 590 s, H100; `run` with carry [".whl", "gpu_scratch"] after
# prepare.sh): what run 10 changed without a GPU run after it.
# 1. GPU tests: the Mosaic kernel (late_slab ignored for double-quantized codes), the
#    transposed GEMV (its table read in the words' registers), every kernel on repacked bytes.
# 2. Llama-3.1-8B NF4+DQ decode, batch 16 then 1: run 10's kernel and table ("new": late_slab
#    rule, gate/up split-K 8) against run 9's ("old"), new, old, new; bf16 in the same call.
# 3. The batch-1 GEMV launches of the decode on bitsandbytes' bytes and repacked
#    (group_probe.py): which of q/k/v, o, gate/up loses the 0.44 ms per step.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
R=docs/measurements/run10; L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
rm -rf /tmp/old && mkdir /tmp/old && cp -r jaxfp4 pallas_kernels tools /tmp/old/
cp gpu_scratch/old/wgmma.py gpu_scratch/old/wgmma_config.py /tmp/old/pallas_kernels/_src/lut_matmul/
cp gpu_scratch/old/matmul_4bit.json /tmp/old/pallas_kernels/data/
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt; date
PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 170 python3 -m pytest -q -n 4 \
  -p no:benchmark -p no:cacheprovider tests/test_wgmma_kernel.py tests/test_lut_kernels.py \
  tests/test_kernel_layout.py > $OUT/pytest.txt 2>&1
echo pytest rc $?; tail -1 $OUT/pytest.txt; grep -E "^FAILED" $OUT/pytest.txt | cut -c1-160 | head; date
dec() {  # tree label variants batches seconds
  [ $(left) -lt 60 ] && return
  (cd $1 && PYTHONPATH=/tmp/site:$PWD timeout -s ABRT $(( $(left) > $5 ? $5 : $(left) )) \
    python3 tools/bench_llama.py --config llama_8b --variants $3 --routes default --skip-qlora \
    --batches $4 --new 64 --repeats 3 2>&1 | grep -E "decode|Error|^#" | sed "s/^/$2: /" \
    | tee -a $OUT/decode.txt)
}
dec $PWD new nf4_dq,bf16 16,1 150; dec /tmp/old old nf4_dq 16 75; dec $PWD new nf4_dq 16 75
[ $(left) -gt 40 ] && PYTHONPATH=/tmp/site:$PWD timeout $(( $(left) - 5 )) python3 $R/group_probe.py 1 \
  2>&1 | grep -v -i warn | tee $OUT/group1.txt
date
