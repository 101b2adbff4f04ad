# Run 8, call 4: the Mosaic modules before and after the branch next/offset-operand, same
# machine, separate processes (docs/benchmarks.md, run 8). Ran as `bash ab_old/ab.sh` from the
# repository root with ab_old/ holding this script and the three modules as they were at
# 0e204eb (not kept here: they are in git). To run it again:
#   mkdir -p ab_old && cp docs/measurements/run8_2026-12-07/ab_old/ab.sh ab_old/ &&
#   for f in wgmma.py wgmma_decode.py wgmma_layout.py; do
#     git show 0e204eb:pallas_kernels/_src/lut_matmul/$f > ab_old/$f; done
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
