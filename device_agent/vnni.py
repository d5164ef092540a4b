"""The runtime's inner products, uint8 x int8 summed exactly in int32, as LLVM IR
for numba kernels, on AVX-512 VNNI (`vpdpbusd`: 64 multiply-adds per instruction).

Weights are in the interleaved layout of `device_agent.kernels.interleave`:
for every 4 inputs, the int8 weights of 16 output rows side by side, so one
instruction multiplies 4 broadcast inputs into the 16 row sums of a vector
register and no horizontal sums are needed.

Compiled only where the CPU has the instructions (`HAS_VNNI`); elsewhere the
kernels use plain loops. Integer sums are exact, so both give identical results.
The intrinsics take addresses rather than arrays: taking an array's row or
address inside a numba loop costs reference counting, an integer costs nothing.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_FEATURES = llvm.get_host_cpu_features()
HAS_VNNI = bool(_FEATURES.get("avx512vnni") and _FEATURES.get("avx512vl") and _FEATURES.get("avx512bw"))

_I32, _I8 = ir.IntType(32), ir.IntType(8)


def _vec(width: int) -> ir.VectorType:
    return ir.VectorType(_I32, width)


def _dpbusd(builder: ir.IRBuilder, width: int, acc: ir.Value, x: ir.Value, q: ir.Value) -> ir.Value:
    name = f"llvm.x86.avx512.vpdpbusd.{32 * width}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vec(width), [_vec(width)] * 3), name)
    return builder.call(fn, [acc, x, q])


def _broadcast32(builder: ir.IRBuilder, xp: ir.Value, offset: ir.Value) -> ir.Value:
    """Four uint8 at xp + offset, repeated across the 16 int32 lanes."""
    word = builder.load(builder.bitcast(builder.gep(xp, [offset]), _I32.as_pointer()), align=1)
    lane0 = builder.insert_element(ir.Constant(_vec(16), ir.Undefined), word, ir.Constant(_I32, 0))
    return builder.shuffle_vector(lane0, ir.Constant(_vec(16), ir.Undefined), ir.Constant(_vec(16), None))


def _row_blocks(blocks: int):  # type: ignore[no-untyped-def]
    """Integer sums of `blocks` blocks of 16 rows in the interleaved layout
    (w[block, k4, row, 4], see `interleave`), one accumulator per block."""
    @intrinsic
    def row_blocks(typingctx, x_addr, w_addr, k4, out_addr):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            x_int, w_int, k4, out_int = args
            xp, wp = builder.inttoptr(x_int, _I8.as_pointer()), builder.inttoptr(w_int, _I8.as_pointer())
            outp = builder.inttoptr(out_int, _vec(16).as_pointer())
            block_bytes = builder.mul(k4, ir.Constant(k4.type, 64))
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_vec(16), None)) for _ in range(blocks)]
            with cgutils.for_range(builder, k4) as loop:
                x4 = _broadcast32(builder, xp, builder.mul(loop.index, ir.Constant(k4.type, 4)))
                base = builder.mul(loop.index, ir.Constant(k4.type, 64))
                for b, acc in enumerate(accs):
                    offset = builder.add(base, builder.mul(block_bytes, ir.Constant(k4.type, b)))
                    w = builder.load(builder.bitcast(builder.gep(wp, [offset]), _vec(16).as_pointer()), align=1)
                    builder.store(_dpbusd(builder, 16, builder.load(acc), x4, w), acc)
            for b, acc in enumerate(accs):
                builder.store(builder.load(acc), builder.gep(outp, [ir.Constant(_I32, b)]), align=1)
            return context.get_dummy_value()
        return types.none(types.intp, types.intp, types.intp, types.intp), codegen
    return row_blocks


vnni_row_blocks4 = _row_blocks(4)
vnni_row_blocks1 = _row_blocks(1)


@intrinsic
def vnni_four_frames_two_blocks(typingctx, x_addr, x_stride, w_addr, k4, out_addr, out_stride):  # type: ignore[no-untyped-def]
    """Integer sums of 2 blocks of 16 interleaved rows for 4 input rows (frames) at x_addr +
    f * x_stride: each weight vector loaded serves four frames, a quarter of the memory
    traffic of one frame at a time. Results go to out_addr + f * out_stride + block * 64."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        x_int, x_stride, w_int, k4, out_int, out_stride = args
        xp, wp = builder.inttoptr(x_int, _I8.as_pointer()), builder.inttoptr(w_int, _I8.as_pointer())
        outp = builder.inttoptr(out_int, _I8.as_pointer())
        block_bytes = builder.mul(k4, ir.Constant(k4.type, 64))
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_vec(16), None)) for _ in range(2)]
                for _ in range(4)]
        with cgutils.for_range(builder, k4) as loop:
            x_off = builder.mul(loop.index, ir.Constant(k4.type, 4))
            w_off = builder.mul(loop.index, ir.Constant(k4.type, 64))
            ws = [builder.load(builder.bitcast(builder.gep(wp, [builder.add(w_off, builder.mul(
                block_bytes, ir.Constant(k4.type, b)))]), _vec(16).as_pointer()), align=1) for b in range(2)]
            for f in range(4):
                x4 = _broadcast32(builder, xp, builder.add(x_off, builder.mul(x_stride, ir.Constant(k4.type, f))))
                for b in range(2):
                    builder.store(_dpbusd(builder, 16, builder.load(accs[f][b]), x4, ws[b]), accs[f][b])
        for f in range(4):
            for b in range(2):
                offset = builder.add(builder.mul(out_stride, ir.Constant(k4.type, f)), ir.Constant(k4.type, 64 * b))
                builder.store(builder.load(accs[f][b]),
                              builder.bitcast(builder.gep(outp, [offset]), _vec(16).as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp), codegen
