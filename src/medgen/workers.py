"""Worker processes for a stage's independent pieces of work (generate's diffusion model beside its GAN).

`process_pool(jobs, threads)` is a spawned `ProcessPoolExecutor` whose workers ignore SIGINT (the stage's
process handles Ctrl-C), die with that process (Linux: kill -9 included), run `threads` torch threads each
(0 = torch's default) and log like the CLI, without progress bars (two bars from two processes garble a
terminal). When the block ends by an exception, Ctrl-C included, every worker is terminated and waited
for: a stopped stage leaves nothing running, and the runs and trials a worker left RUNNING belong to a dead
process, which the stage runner closes as it unwinds (medgen.runner).

Workers write no output files: a stage's outputs are one transaction of the stage's own process
(medgen.outputs), so work in a worker returns its results and the stage writes them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import torch


def _die_with(parent: int) -> None:
    """Linux: the kernel kills this process when its parent dies (kill -9 included), so no worker outlives a
    killed stage and goes on writing trials and runs into the stores."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _init(parent: int, threads: int, level: int) -> None:
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the workers
    if threads:
        torch.set_num_threads(threads)
    os.environ["MEDGEN_PROGRESS"] = "log"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@contextlib.contextmanager
def process_pool(jobs: int, threads: int) -> Iterator[ProcessPoolExecutor]:
    """`jobs` spawned worker processes (see the module text); terminated if the block raises."""
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    executor = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init, initargs=(os.getpid(), threads, level))
    try:
        yield executor
    except BaseException:
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # gone before the stage closes the runs and trials they left RUNNING
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        raise
    executor.shutdown(wait=True)
