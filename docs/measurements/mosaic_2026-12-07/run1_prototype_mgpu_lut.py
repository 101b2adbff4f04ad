# Copy of the prototype after run 1, with two edits made after that run: `_load` (JAX 0.10's
# plgpu.load needs an index) and llvm.inline_asm in place of mosaic's utils.inline_ptx (absent
# in JAX 0.10; run 1 used inline_ptx(..., convergent=True) for the shuffle). The library kernel
# is pallas_kernels/_src/lut_matmul/wgmma.py.
"""Experimental Mosaic GPU register-table tensor-core kernel (NF4/FP4 bnb bytes, float32 absmax per 64)."""
import functools
import inspect
import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.mosaic.gpu import fragmented_array as fa
from jax.experimental.mosaic.gpu import utils as mgpu_utils
from jax._src.lib.mlir import ir
from jax._src.lib.mlir.dialects import arith, llvm, vector

# Within each 64-weight block, the decoded weight at real K index k lands at logical index PERM[k]
# (bnb's high-nibble-first bytes viewed as little-endian uint32 words, WGMMA register layout).
PERM64 = np.array([1, 0, 9, 8, 17, 16, 25, 24, 33, 32, 41, 40, 49, 48, 57, 56, 3, 2, 11, 10, 19, 18, 27, 26, 35, 34, 43, 42, 51, 50, 59, 58, 5, 4, 13, 12, 21, 20, 29, 28, 37, 36, 45, 44, 53, 52, 61, 60, 7, 6, 15, 14, 23, 22, 31, 30, 39, 38, 47, 46, 55, 54, 63, 62])


# JAX 0.10 requires the index argument of plgpu.load; 0.11 deprecates it (index the ref instead).
_LOAD_NEEDS_IDX = inspect.signature(plgpu.load).parameters["idx"].default is inspect.Parameter.empty


def _load(ref, layout):
    if _LOAD_NEEDS_IDX:
        return plgpu.load(ref, None, layout=layout, optimized=False)
    return plgpu.load(ref, layout=layout, optimized=False)


def permute_activations(x):
    """x[..., K] -> x_log with x_log[..., PERM[k]] = x[..., k] (per 64-block)."""
    *lead, k = x.shape
    inv = np.argsort(PERM64)  # x_log[j] = x[inv[j]]
    xb = x.reshape(*lead, k // 64, 64)
    return jnp.take(xb, jnp.asarray(inv), axis=-1).reshape(*lead, k)


def _decode(tile_k):
    nblk = tile_k // 64

    @plgpu.inline_mgpu(
        arg_types=(plgpu.Layout.WGMMA, plgpu.Layout.WG_STRIDED((128,), vec_size=1))
        + tuple(plgpu.Layout.WGMMA.reduce(1) for _ in range(nblk)),
        return_type=plgpu.ShapeDtypeStruct((64, tile_k), jnp.bfloat16, layout=plgpu.Layout.WGMMA),
    )
    def decode(ctx, words, table, *scales):
        i32 = ir.IntegerType.get_signless(32)
        f32 = ir.F32Type.get()
        bf16 = ir.BF16Type.get()
        wregs = words.registers  # shape (1, nblk, 1, 1, 2, 1, ...) of vector<2xi32>
        tab = vector.extract(table.registers.flat[0], dynamic_position=[], static_position=ir.DenseI64ArrayAttr.get([0]))
        out_shape = fa.WGMMA_LAYOUT.registers_shape((64, tile_k))
        out = np.empty(out_shape, dtype=object)
        for idx in np.ndindex(wregs.shape):
            j, h = idx[1], idx[4]
            sreg = scales[j].registers[(0, 0, h, 0, 0)]
            s = vector.extract(sreg, dynamic_position=[], static_position=ir.DenseI64ArrayAttr.get([0]))
            vals = []
            for w in range(2):
                word = vector.extract(wregs[idx], dynamic_position=[], static_position=ir.DenseI64ArrayAttr.get([w]))
                for p in range(8):
                    sel = word if p == 0 else arith.shrui(word, mgpu_utils.c(4 * p, i32))
                    v = llvm.inline_asm(f32, [tab, sel], "shfl.sync.idx.b32 $0, $1, $2, 0x101f, 0xffffffff;",
                                        "=f,f,r")
                    vals.append(arith.mulf(v, s))
            for q in range(8):
                lo, hi = vals[2 * q], vals[2 * q + 1]
                packed = llvm.inline_asm(i32, [hi, lo], "cvt.rn.bf16x2.f32 $0, $1, $2;", "=r,f,f")
                out_idx = list(idx)
                out_idx[1] = 8 * j + q  # nibble e = 8 * (2j + w) + p sits in bf16 register e // 2
                out[tuple(out_idx)] = mgpu_utils.bitcast(packed, ir.VectorType.get((2,), bf16))
        return fa.FragmentedArray(_registers=out, _layout=fa.WGMMA_LAYOUT, _is_signed=None)

    return decode


def matmul_lut_mgpu(x_log, words, absmax_t, table128, *, tile_k=128, split_k=4, steps=4, out_dtype=jnp.float32):
    """y[S, N, M] split-K partial sums: words [N, K/8] int32 (bnb bytes viewed), absmax_t [K/64, N] f32, x_log [M, K] bf16."""
    m, k = x_log.shape
    n = words.shape[0]
    tile_n = 64
    nblk = tile_k // 64
    k_per_split = k // split_k
    k_iters = k_per_split // tile_k
    assert k % (split_k * tile_k) == 0 and n % tile_n == 0 and m % 8 == 0
    w_swz = plgpu.find_swizzle(tile_k // 8 * 32, "lhs")
    x_swz = plgpu.find_swizzle(tile_k * 16, "rhs")
    o_swz = plgpu.find_swizzle(m * 32, "out")
    decode = _decode(tile_k)

    def kernel(x_gmem, w_gmem, s_gmem, t_gmem, o_gmem, o_smem):
        ni = lax.axis_index("n")
        ks = lax.axis_index("k")
        table = _load(t_gmem, plgpu.Layout.WG_STRIDED((128,), vec_size=1))

        def acc_scope(acc_ref):
            def body(_, x_smem, w_smem, s_smem):
                w = _load(w_smem, plgpu.Layout.WGMMA)
                scales = [_load(s_smem.at[b], plgpu.Layout.WGMMA.reduce(1)) for b in range(nblk)]
                a = decode(w, table, *scales)
                plgpu.wgmma(acc_ref, a, x_smem.transpose((1, 0)))
                plgpu.wgmma_wait(0)

            plgpu.emit_pipeline(
                body,
                grid=(k_iters,),
                in_specs=[
                    plgpu.BlockSpec((m, tile_k), lambda kk: (0, ks * k_iters + kk),
                                    transforms=(plgpu.TilingTransform((8, x_swz // 2)), plgpu.SwizzleTransform(x_swz))),
                    plgpu.BlockSpec((tile_n, tile_k // 8), lambda kk: (ni, ks * k_iters + kk)),
                    plgpu.BlockSpec((nblk, tile_n), lambda kk: (ks * k_iters + kk, ni)),
                ],
                max_concurrent_steps=steps,
            )(x_gmem, w_gmem, s_gmem)
            return acc_ref[...]

        acc = pl.run_scoped(acc_scope, plgpu.ACC((tile_n, m)))
        o_smem[...] = acc.astype(o_smem.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[ks, pl.ds(ni * tile_n, tile_n)])
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    f = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((split_k, n, m), out_dtype),
        grid=(n // tile_n, split_k),
        grid_names=("n", "k"),
        scratch_types=dict(o_smem=plgpu.SMEM((tile_n, m), out_dtype)),
    )
    return f(x_log, words, absmax_t, table128)


def prepare(packed_u8, absmax, k):
    """Kernel layout, made once per weight: the bnb bytes as int32 words [N, K/8], absmax as [K/64, N]
    (a TMA box needs >= 16 bytes along its minor dimension)."""
    n = packed_u8.size * 2 // k
    words = lax.bitcast_convert_type(packed_u8.reshape(n, k // 8, 4), jnp.int32)
    return words, absmax.reshape(n, k // 64).astype(jnp.float32).T


def matmul_prepared(x, words, absmax_t, table16, **cfg):
    m = x.shape[0]
    mp = -(-m // 8) * 8
    x_log = permute_activations(jnp.pad(x, ((0, mp - m), (0, 0))) if mp != m else x)
    table128 = jnp.tile(table16.astype(jnp.float32), 8)
    part = matmul_lut_mgpu(x_log, words, absmax_t, table128, **cfg)
    return part.sum(0).T[:m].astype(x.dtype)


def matmul_nf4(x, packed_u8, absmax, table16, **cfg):
    """x [M, K] bf16 @ W.T where W is bnb NF4 bytes packed_u8 [N*K/2] with absmax [N*K/64]."""
    words, absmax_t = prepare(packed_u8, absmax, x.shape[1])
    return matmul_prepared(x, words, absmax_t, table16, **cfg)
