"""Time the decode step with the tensor-core group kernel allowed (patch) vs default."""
import sys, runpy
mode = sys.argv[1]
if mode == "mma":
  from jaxfp4._src import matmul_group as mg
  from jaxfp4._src import matmul as matmul_lib
  orig = mg._shared_launch
  def patched(x, datas, states, implementation):
    m = x.shape[0]
    if len(states) < 2:
      return None
    routes = {matmul_lib._route(m, st, x.dtype, implementation, False) for st in states}
    if len(routes) != 1 or routes - {"gemv", "mma"}:
      return None
    pairs = [matmul_lib.kernel_weight(d, st) for d, st in zip(datas, states)]
    if len({f for _, f in pairs}) != 1:
      return None
    return [w for w, _ in pairs], pairs[0][1], routes.pop()
  mg._shared_launch = patched
sys.argv = ["bench_llama.py"] + sys.argv[2:]
runpy.run_path("tools/bench_llama.py", run_name="__main__")
