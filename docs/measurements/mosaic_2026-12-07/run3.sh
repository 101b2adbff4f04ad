python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
ND=$(timeout 20 find /usr/local /usr/bin /opt $(python3 -c "import site;print(site.getsitepackages()[0])") -name nvdisasm -type f 2>/dev/null | head -1); echo "nvdisasm: $ND"; [ -n "$ND" ] && export PATH=$PATH:$(dirname $ND)
python3 - <<'PY'
import json
from pallas_kernels._src import common
p = "pallas_kernels/data/matmul_4bit.json"; d = json.load(open(p))
d.setdefault(common.device_kind(), {}).setdefault("lut", {"gemv_max_m": 4, "mma_max_m": 128})["wgmma_max_m"] = 256
json.dump(d, open(p, "w"), indent=1); print("wgmma on for", common.device_kind())
PY
timeout 170 python3 tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq --routes default --skip-qlora --batches 16 --repeats 2 > $OUT/llama8b_b16.txt 2>&1; echo b8 rc $?; tail -4 $OUT/llama8b_b16.txt
timeout 120 jaxfp4 bench --skip-quantize --matmul-shapes 8192x8192,4096x4096 --ms 16,128,256 --no-backward --format-types nf4+dq,fp4 --format-ms 16 --json $OUT/bench.json > $OUT/bench.txt 2>&1; echo bench rc $?; tail -40 $OUT/bench.txt
MOSAIC_GPU_DUMP_SASS=1 timeout 40 python3 - > $OUT/sass.txt 2>&1 <<'PY'
import jax, jax.numpy as jnp, numpy as np, sys
sys.path.insert(0, ".")
from tests.test_matmul_kernels import make_weight
from pallas_kernels._src.lut_matmul import wgmma
w, fmt = make_weight(4096, 4096, 64, "float", seed=1)
x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 4096)), jnp.bfloat16)
print(float(jax.jit(lambda x, w: wgmma.wgmma_4bit(x, w, fmt=fmt, config=wgmma.WgmmaConfig()))(x, w).astype(jnp.float32).mean()))
PY
echo sass rc $?; wc -l $OUT/sass.txt; date; echo ALLDONE
