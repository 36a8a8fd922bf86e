"""The kernel library: fused GEMM, convolution, pooling and element-wise kernels as Braze programs.

Every function here takes a :class:`~braze.isa.Config` and shapes and returns a
:class:`Kernel`: a straight-line instruction list for that configuration, the
external-memory operands it reads and writes, and its predicted cycles (the
timing model of :mod:`braze.isa.timing`) and MACs.  Nothing here knows about a
graph IR; the compiler calls these functions, places the operands and chains
the kernels.

The package's modules, by kernel family:

* :mod:`.common` -- what every kernel shares: :class:`Operand`, :class:`Kernel`, operand placement,
  the scheduling of unit streams into one program (both documented there), the fused epilogue's
  options, and the host-side helpers;
* :mod:`.matmul` -- the tiled matrix-multiply pipeline (:class:`Tiling`, :func:`candidate_tilings`) and
  :func:`gemm`;
* :mod:`.conv` -- :func:`conv2d` on that pipeline;
* :mod:`.pool` -- :func:`maxpool2d`, :func:`avgpool2d`, :func:`global_avgpool`;
* :mod:`.elementwise` -- :func:`add`, :func:`relu`, :func:`clip`, :func:`table`;
* :mod:`.loops` -- loops rolled from the straight-line kernels (:func:`gemm` ``loops=True``);
* :mod:`.looped` -- GEMMs written as loops: batch-parametric, and :func:`skipping_gemm`, which
  skips all-zero K-blocks of A on chip.

The limitations of each family are in its module's documentation.  Everything public is
imported here: use ``braze.sw.compiler.kernels.gemm``, not the module it lives in.

Kernels
-------
* :func:`gemm` -- ``out = epilogue(A @ B)``, int8 operands, bias / requantize /
  residual / activation fused, int8 or int32 output.
* :func:`conv2d` -- NHWC convolution as a GEMM whose A tile is gathered from the
  input by strided LOADs (implicit im2col; see the function).
* :func:`maxpool2d`, :func:`avgpool2d`, :func:`global_avgpool` -- VECTOR
  max / sum in the accumulator, averaging by multiply and shift.
* :func:`add`, :func:`relu`, :func:`clip`, :func:`table` -- element-wise (``table``: a 256-entry
  int8 activation table, the same lookup ``gemm``/``conv2d`` fuse with ``act="table"``).

Host-side helpers: :func:`pack_params`, :func:`pack_table`, :func:`conv2d_weights`,
:func:`avg_multiplier`, :func:`link`, :func:`run_kernel`, :func:`run_kernels`.
"""

import contextlib
from collections.abc import Iterator

from . import conv, matmul
from .common import (
    MAX_VECTOR_MULT,
    OPERAND_ALIGN,
    Kernel,
    KernelError,
    KernelResult,
    Operand,
    conv2d_output_shape,
    link,
    pack_params,
    pack_table,
    run_kernel,
    run_kernels,
    utilisation,
)
from .conv import ConvLayer, FCLayer, chain_fc_weights, conv2d, conv2d_chain, conv2d_weights, taps_per_chunk
from .elementwise import add, clip, relu, table
from .looped import skipping_gemm
from .matmul import ALoader as ALoader  # public in the old module, though not in __all__
from .matmul import Tiling, batched_gemm, candidate_tilings, gemm, matmul_tilings, zero_point_rows
from .pool import avg_multiplier, avgpool2d, global_avgpool, maxpool2d


@contextlib.contextmanager
def isolated_memos() -> Iterator[None]:
    """Generate kernels inside with empty in-process memos (the candidates :mod:`.matmul` generated or
    ruled out, :mod:`.conv`'s A-tile LOADs), and restore the process's own afterwards.

    Generation is meant to be a pure function of its arguments, but which candidates a search
    generates, prunes or finds remembered -- and so what its candidate budget counts -- depends on
    what the process asked for before.  A caller that must draw exactly the same kernels in any
    process (calibration, which resumes by the kernels' signatures) generates them here.
    """
    saved = matmul._GENERATED, matmul._BOUNDS, conv._A_LOADS, conv._A_LOADS_AT_ZERO
    matmul._GENERATED, matmul._BOUNDS, conv._A_LOADS, conv._A_LOADS_AT_ZERO = {}, {}, {}, {}
    try:
        yield
    finally:
        matmul._GENERATED, matmul._BOUNDS, conv._A_LOADS, conv._A_LOADS_AT_ZERO = saved

__all__ = [
    "KernelError", "Operand", "Kernel", "KernelResult",
    "gemm", "batched_gemm", "zero_point_rows", "conv2d", "conv2d_output_shape", "maxpool2d", "avgpool2d",
    "global_avgpool",
    "add", "relu", "clip", "table",
    "pack_params", "pack_table",
    "conv2d_weights", "taps_per_chunk", "avg_multiplier", "link", "run_kernel", "run_kernels", "utilisation",
    "conv2d_chain", "ConvLayer", "FCLayer", "chain_fc_weights",
    "Tiling", "candidate_tilings", "matmul_tilings", "MAX_VECTOR_MULT", "OPERAND_ALIGN",
    "skipping_gemm", "isolated_memos",
]
