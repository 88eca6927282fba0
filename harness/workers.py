"""Several worker processes on this machine (``run --workers K``): each builds its own experiment and runs the
same study file against the same storage; the claims keep them from ever running a point twice."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.config import StudyConfig
from harness.errors import HarnessError
from harness.experiment import Experiment
from harness.storage import Storage
from harness.study import Runner, RunOptions


def _worker_main(
    index: int, config: StudyConfig, url: str, data_dir: Path | None, options: RunOptions, threads: int
) -> None:
    """Entry point of one worker process (spawned; everything it needs is passed in)."""
    import sys

    from harness.quiet import quiet_libraries

    quiet_libraries(transformers=True)
    torch.set_num_threads(threads)
    try:
        experiment = Experiment(config, data_dir, options.cache_dir, progress=False)
        Runner(
            config, Storage(url), experiment, options, log=lambda line: print(f"[worker {index}] {line}", flush=True)
        ).run()
    except HarnessError as error:
        print(f"error: [worker {index}] {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_workers(count: int, config: StudyConfig, url: str, data_dir: Path | None, options: RunOptions) -> int:
    """Run ``count`` worker processes on this machine and wait for them; returns the worst exit code."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // count)
    processes = [
        context.Process(target=_worker_main, args=(i, config, url, data_dir, options, threads)) for i in range(count)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return max(abs(process.exitcode or 0) for process in processes)
