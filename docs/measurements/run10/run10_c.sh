python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run10
timeout ${LIMIT:-400} python3 $D/grid_probe.py 16 6144x4096,28672x4096,4096x14336,4096x4096,8192x8192 > $OUT/grid16.txt 2>&1
echo rc $?; grep -E "BEST|default|bf16" $OUT/grid16.txt
