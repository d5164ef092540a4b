"""The runtime's inner product, uint8 x int8 summed exactly in int32, as LLVM IR
for numba kernels.

`dot_u8s8_vnni` uses AVX-512 VNNI (`vpdpbusd`: 64 multiply-adds per
instruction) and is compiled only where the CPU has it (`HAS_VNNI`);
`dot_u8s8_plain` is a plain loop the compiler vectorises for any CPU. Integer
sums are exact, so both give identical results.

Both take addresses rather than arrays: taking a row of an array (or its
address) inside a numba loop costs reference counting, a plain integer
address computed once per call costs nothing.
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


def _load(builder: ir.IRBuilder, base: ir.Value, offset: ir.Value, width: int) -> ir.Value:
    return builder.load(builder.bitcast(builder.gep(base, [offset]), _vec(width).as_pointer()), align=1)


def _block_loop(builder: ir.IRBuilder, xp: ir.Value, qp: ir.Value, start: ir.Value, blocks: ir.Value,
                width: int) -> ir.Value:
    """Sum over `blocks` blocks of 4 * width bytes from `start`; returns the int32 total."""
    acc = cgutils.alloca_once_value(builder, ir.Constant(_vec(width), None))
    step = ir.Constant(start.type, 4 * width)
    with cgutils.for_range(builder, blocks) as loop:
        offset = builder.add(start, builder.mul(loop.index, step))
        builder.store(_dpbusd(builder, width, builder.load(acc), _load(builder, xp, offset, width),
                              _load(builder, qp, offset, width)), acc)
    reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_vec(width)]),
                                            f"llvm.vector.reduce.add.v{width}i32")
    return builder.call(reduce, [builder.load(acc)])


def _scalar_loop(builder: ir.IRBuilder, xp: ir.Value, qp: ir.Value, start: ir.Value, stop: ir.Value) -> ir.Value:
    acc = cgutils.alloca_once_value(builder, ir.Constant(_I32, 0))
    with cgutils.for_range(builder, builder.sub(stop, start)) as loop:
        i = builder.add(start, loop.index)
        x = builder.zext(builder.load(builder.gep(xp, [i])), _I32)
        q = builder.sext(builder.load(builder.gep(qp, [i])), _I32)
        builder.store(builder.add(builder.load(acc), builder.mul(x, q)), acc)
    return builder.load(acc)


def _pointers(builder: ir.IRBuilder, args: list) -> tuple[ir.Value, ir.Value, ir.Value]:
    x_int, q_int, k = args
    return builder.inttoptr(x_int, _I8.as_pointer()), builder.inttoptr(q_int, _I8.as_pointer()), k


_SIGNATURE = types.int32(types.intp, types.intp, types.intp)


@intrinsic
def dot_u8s8_vnni(typingctx, x_addr, q_addr, k):  # type: ignore[no-untyped-def]
    """sum(x[i] * q[i]) for i < k, x uint8 and q int8 at the given addresses."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        xp, qp, k = _pointers(builder, args)
        c64, c16 = ir.Constant(k.type, 64), ir.Constant(k.type, 16)
        wide = builder.udiv(k, c64)  # 64 bytes per 512-bit instruction
        start = builder.mul(wide, c64)
        narrow = builder.udiv(builder.sub(k, start), c16)  # then 16 bytes per 128-bit one
        tail = builder.add(start, builder.mul(narrow, c16))
        total = builder.add(_block_loop(builder, xp, qp, ir.Constant(k.type, 0), wide, 16),
                            _block_loop(builder, xp, qp, start, narrow, 4))
        return builder.add(total, _scalar_loop(builder, xp, qp, tail, k))
    return _SIGNATURE, codegen


@intrinsic
def dot_u8s8_plain(typingctx, x_addr, q_addr, k):  # type: ignore[no-untyped-def]
    """The same sum as a plain loop."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        xp, qp, k = _pointers(builder, args)
        return _scalar_loop(builder, xp, qp, ir.Constant(k.type, 0), k)
    return _SIGNATURE, codegen


dot_u8s8 = dot_u8s8_vnni if HAS_VNNI else dot_u8s8_plain


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
