# Run 6: matmul_4bit and the Llama decode with the configs run 5's sweep recorded
# (gpu_scratch/matmul_4bit.json copied over pallas_kernels/data/ on the device only).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt; cat $OUT/gpu.txt; date
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
timeout 100 python3 -m jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192 --ms 16,64,128 --no-backward --format-types fp4,nf4+dq,fp4+dq --format-ms 16,128 > $OUT/bench.txt 2>&1; echo bench rc $?; grep -v Warn $OUT/bench.txt | tail -40
timeout -s ABRT 300 python3 -X faulthandler tools/bench_llama.py --config llama_8b --variants nf4_dq,bf16 --routes default --skip-qlora --batches 16 --repeats 2 > $OUT/llama8b_b16.txt 2>&1; echo b8 rc $?; grep -v Warning $OUT/llama8b_b16.txt | grep -v "site-packages" | tail -30
date
