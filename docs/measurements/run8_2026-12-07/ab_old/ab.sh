python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site
rm -rf /tmp/old && mkdir /tmp/old && cp -r jaxfp4 pallas_kernels tools pyproject.toml /tmp/old/ && cp ab_old/*.py /tmp/old/pallas_kernels/_src/lut_matmul/
nvidia-smi --query-gpu=name --format=csv,noheader; date
for r in 1 2; do
for v in old new; do
  if [ $v = old ]; then d=/tmp/old; else d=$PWD; fi
  (cd $d && PYTHONPATH=/tmp/site:$d timeout -s ABRT 150 python3 tools/bench_llama.py --config llama_8b \
    --variants nf4_dq --routes default --skip-qlora --batches 1,16 --repeats 2 2>&1 | grep -E "decode|#" | sed "s/^/$v r$r: /")
done; done | tee $OUT/ab.txt
date
