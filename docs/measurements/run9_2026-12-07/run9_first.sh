# Run 9, first call (<= 590 s): the machine came back late in the eighth session with less
# device time than run9_b.sh + run9.sh need, so the most important parts first: the GPU tests
# of everything written since run 8 (the repacked layout, post_scale, the transposed kernels),
# then the Llama-3.1-8B NF4+DQ decode A/B of bitsandbytes' bytes against the repacked ones,
# two rounds in opposite order, batch 1 and 16, committed table; then transpose_out (t2).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run9_next; T=pallas_kernels/data/matmul_4bit.json
L=${LIMIT:-585}; left() { echo $(( L - SECONDS )); }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu_first.txt; date
python3 $D/tables.py $OUT
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 170 python3 -m pytest -q -n 4 -p no:benchmark \
  -p no:cacheprovider tests/test_kernel_layout.py tests/test_wgmma_kernel.py \
  tests/test_lut_kernels.py > $OUT/pytest_first.txt 2>&1
echo pytest rc $?; tail -2 $OUT/pytest_first.txt; grep -E "^FAILED" $OUT/pytest_first.txt | cut -c1-160 | head -20; date
ab() {  # table variants batches seconds
  [ $(left) -lt 60 ] && return
  cp $OUT/$1.json $T
  timeout -s ABRT $(( $(left) > $4 ? $4 : $(left) )) python3 tools/bench_llama.py \
    --config llama_8b --variants $2 --routes default --skip-qlora --batches $3 --new 64 \
    --repeats 3 2>&1 | grep -E "decode|^#|^nf4|Error" | sed "s/^/$1: /" | tee -a $OUT/decode_first.txt
}
ab t0 nf4_dq,nf4_dq_wgmma 1,16 175
ab t0 nf4_dq_wgmma,nf4_dq 1,16 175
ab t2 nf4_dq_wgmma,nf4_dq 16 120
cp $OUT/t0.json $T; date
