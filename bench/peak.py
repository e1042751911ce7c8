"""The yardsticks the speed benchmarks share: the machine's matmul peak per dtype, its CPU clock, and its load.

MFU = useful FLOPs per second / peak. The peak must be the fastest GEMM this core really reaches in that dtype,
or MFU flatters: one square 2048 GEMM measured once came out at 99 GFLOP/s fp32 on a core that reaches
155-161, and the step benchmark printed "MFU 138.8%". So `matmul_peak` takes the best over several GEMM shapes
(square, wide, and the tall-skinny im2col shapes convolutions run), both PyTorch entry points, and several
repetitions; benchmarks call it before and after their timed rounds and keep the higher figure, and
`check_mfu` refuses a result above 100% instead of printing it.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

# (M, K, N): square, large-K wide, short-N wide, and a conv's im2col product (16 images x 32x32 px, 3x3x64 in)
PEAK_SHAPES = ((2048, 2048, 2048), (8192, 1024, 1024), (4096, 4096, 256), (16384, 576, 64))


def cpu_clock() -> float:
    """CPU seconds of this thread: unlike wall time, barely moved by other jobs sharing the cores.
    Only meaningful with one torch thread; with more threads this falls back to wall time."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def matmul_peak(dtype: torch.dtype, reps: int = 3, shapes=PEAK_SHAPES) -> tuple[float, tuple[int, int, int]]:
    """(FLOP/s, shape): the fastest of torch.mm and F.linear over `shapes`, best of `reps` runs each."""
    best, best_shape = 0.0, shapes[0]
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        bt = b.t().contiguous()  # F.linear's (out, in) weight layout
        for fn in (lambda: torch.mm(a, b), lambda: F.linear(a, bt)):
            fn()  # warm-up: kernel selection, page faults of the output
            for _ in range(reps):
                t = cpu_clock()
                fn()
                rate = 2 * m * k * n / (cpu_clock() - t)
                if rate > best:
                    best, best_shape = rate, (m, k, n)
    return best, best_shape


def check_mfu(mfu: float, what: str) -> float:
    """An MFU above 100% means the peak was mis-measured (or the FLOPs over-counted): stop, do not print it."""
    if mfu > 1.0:
        raise SystemExit(f"{what}: MFU {100 * mfu:.1f}% > 100%: the measured peak is too low (a busy machine "
                         "during the peak measurement?) or the FLOP count too high; rerun on a quieter machine")
    return mfu


def load() -> str:
    return "load avg %.2f %.2f %.2f" % os.getloadavg()
