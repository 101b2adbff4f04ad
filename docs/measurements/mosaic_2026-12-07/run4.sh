python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 - <<'PY'
import json
from pallas_kernels._src import common
p = "pallas_kernels/data/matmul_4bit.json"; d = json.load(open(p))
d.setdefault(common.device_kind(), {}).setdefault("lut", {"gemv_max_m": 4, "mma_max_m": 128})["wgmma_max_m"] = 256
json.dump(d, open(p, "w"), indent=1); print("wgmma on for", common.device_kind())
PY
date
timeout -s ABRT 140 python3 -X faulthandler tools/bench_llama.py --config llama_1b --variants nf4_dq,bf16 --routes default --skip-qlora --batches 16 --repeats 2 > $OUT/llama1b_b16.txt 2>&1; echo b1 rc $?; date; grep -v "^  File.*site-packages" $OUT/llama1b_b16.txt | tail -25
timeout 90 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 16,128,256 --no-backward > $OUT/bench.txt 2>&1; echo bench rc $?; tail -30 $OUT/bench.txt; date
