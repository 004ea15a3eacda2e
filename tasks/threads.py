"""One BLAS/OpenMP thread for the numerics of a campaign (surrogate fits, proposals, reports).

A campaign's matrices are small (hundreds of points): a second BLAS or OpenMP thread saves almost
nothing on a quiet machine, and on a busy one (a rig PC that also drives instruments, or a worker
beside others) it spin-waits for a core. Measured in one process on a loaded 2-core machine, the
libraries' default of one thread per core made a campaign's proposals several times slower in
wall time and used several times more CPU than one thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


@functools.cache
def _controller():
    # Made at first use, once numpy, scipy and scikit-learn have loaded their BLAS and OpenMP;
    # limiting through it costs microseconds, looking the libraries up again milliseconds.
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_thread():
    """A context in which BLAS and OpenMP run on one thread; the previous limits come back after."""
    return _controller().limit(limits=1)


def single_threaded(func: F) -> F:
    """Run `func` with one BLAS/OpenMP thread (`one_thread`)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with one_thread():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
