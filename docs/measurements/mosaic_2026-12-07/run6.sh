# Run 6: the Llama decode with the configs run 5's sweeps recorded (gpu_scratch/matmul_4bit.json,
# copied over pallas_kernels/data/ on the device only), and the Mosaic compile cost per call site.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
left() { echo $(( ${1} - SECONDS )); }
[ -f gpu_scratch/matmul_4bit.json ] && cp gpu_scratch/matmul_4bit.json pallas_kernels/data/matmul_4bit.json && echo "recorded configs in use"
python3 - <<'PY'
# On a device kind without recorded limits (an H200), use the H100's for this run only.
import json
from pallas_kernels._src import common
p = "pallas_kernels/data/matmul_4bit.json"; d = json.load(open(p))
e = d.setdefault(common.device_kind(), {})
if "wgmma_max_m" not in e.get("lut", {}):
    e["lut"] = dict(d["nvidia_h100_80gb_hbm3"]["lut"]); print("H100 limits used on", common.device_kind())
print(common.device_kind(), e["lut"]); json.dump(d, open(p, "w"), indent=1)
PY
timeout 60 python3 docs/measurements/mosaic_2026-12-07/run6_compile.py > $OUT/compile.txt 2>&1; echo compile rc $?; grep calls $OUT/compile.txt; date
timeout -s ABRT $(left 400) python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants nf4_dq,bf16 --routes default --skip-qlora --batches 16,1 --repeats 2 > $OUT/llama8b.txt 2>&1; echo b8 rc $?; grep -v Warning $OUT/llama8b.txt | grep -v "site-packages" | tail -30; date
timeout -s ABRT $(left 585) python3 -X faulthandler tools/bench_llama.py --config llama_1b --variants nf4_dq,bf16 --routes default --skip-qlora --batches 16,1 --repeats 2 > $OUT/llama1b.txt 2>&1; echo b1 rc $?; grep -v Warning $OUT/llama1b.txt | grep -v "site-packages" | tail -20; date
