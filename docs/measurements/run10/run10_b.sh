python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/flax*.whl
export PYTHONPATH=/tmp/site:$PWD
D=docs/measurements/run10
timeout 200 python3 $D/dq_probe.py 16 8192x8192,28672x4096,6144x4096 > $OUT/dq_probe16.txt 2>&1
grep -v -i warn $OUT/dq_probe16.txt | tail -50
timeout 120 python3 $D/dq_probe.py 1 6144x4096,28672x4096,4096x14336 > $OUT/dq_probe1.txt 2>&1
grep -v -i warn $OUT/dq_probe1.txt | tail -20
