"""Load the model so that only the thread that decodes keeps a pool of intra-op threads.

torch's CPU kernels run in OpenMP (libgomp), which keeps one pool of worker threads per
thread that ran a parallel operation, and whose workers spin only briefly before they
sleep once it manages more threads than there are cores. A model loaded on the main thread
with every core leaves a pool there; the scheduler's worker thread that then decodes gets
a second one, and each parallel operation of a decoding step has to wake a sleeping worker
(tens of microseconds; a 256 x 256 add took 40-70 us instead of 5 on 2 cores). A streaming
update, hundreds of small operations per token, decoded about 2x slower on the worker
thread than on the main thread (docs/streaming.md). Loading with one intra-op thread
starts no pool, so the worker's is the only one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_intraop_thread() -> Iterator[None]:
    """Run the block (loading a model) with one intra-op thread, then restore the count:
    the calling thread starts no OpenMP pool, and the next thread to compute starts the
    only one, with every core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
