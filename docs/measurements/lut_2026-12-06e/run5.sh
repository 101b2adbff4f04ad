python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c "import jax; print(jax.__version__, jax.devices())"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 300 python3 -m pytest -q -n 4 -p no:benchmark -p no:cacheprovider tests/test_kernels.py tests/test_golden_bnb.py tests/test_lut_kernels.py tests/test_matmul_group.py tests/test_reliability.py tests/test_matmul.py -x -q 2>&1 | tail -25 > $OUT/pytest.txt; echo pytest done
cat $OUT/pytest.txt
for m in default mma; do
V=nf4_dq; [ $m = default ] && V=bf16,nf4_dq; timeout 130 python3 gpu_scratch/group_mma.py $m --config llama_8b --variants $V --routes default --skip-qlora --batches 16 --repeats 3 > $OUT/b8_$m.txt 2>&1; echo b8 $m rc $?; tail -4 $OUT/b8_$m.txt
done
for m in default mma; do
timeout 60 python3 gpu_scratch/group_mma.py $m --config llama_1b --variants nf4_dq --routes default --skip-qlora --batches 16 --repeats 3 > $OUT/b1_$m.txt 2>&1; echo b1 $m rc $?; tail -4 $OUT/b1_$m.txt
done
