"""Several worker processes on this machine (``run --workers K``): each builds its own experiment and runs the
same study file against the same storage; the claims keep them from ever running a point twice.

Workers are placed round-robin over the GPUs (:func:`assign_devices`): the visible ones (``CUDA_VISIBLE_DEVICES``
is respected, as CUDA numbers what it shows) or those of ``--devices 0,1,…``. K may exceed the number of GPUs:
a small student leaves most of a modern GPU idle, so several share one. Without a GPU every worker uses the CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.distill.experiment import Experiment
from harness.spec.config import StudyConfig
from harness.store.storage import Storage
from harness.sweep.driver import Runner, RunOptions
from harness.util.errors import HarnessError


def parse_devices(text: str | None) -> list[int] | None:
    """``--devices 0,1`` → ``[0, 1]``; a bad list is a one-line error."""
    if text is None:
        return None
    try:
        devices = [int(part) for part in text.split(",")]
    except ValueError:
        devices = []
    if not devices or any(d < 0 for d in devices) or len(set(devices)) != len(devices):
        raise HarnessError(f"--devices {text!r}: expected distinct GPU indices separated by commas, e.g. 0,1")
    return devices


def assign_devices(count: int, visible: int, chosen: list[int] | None = None) -> list[str]:
    """The device of each of ``count`` workers: round-robin over ``chosen`` GPU indices (default: all
    ``visible`` ones), ``cpu`` for all when there is no GPU. A chosen index that is not visible is an error."""
    if chosen is not None:
        missing = [d for d in chosen if d >= visible]
        if missing:
            raise HarnessError(
                f"--devices {','.join(map(str, chosen))}: GPU {missing[0]} is not visible "
                f"(this machine shows {visible}; allowed: 0..{visible - 1})"
                if visible
                else f"--devices {','.join(map(str, chosen))}: this machine shows no GPU"
            )
    gpus = chosen if chosen is not None else list(range(visible))
    if not gpus:
        return ["cpu"] * count
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(count)]


def _worker_main(
    index: int,
    config: StudyConfig,
    url: str,
    data_dir: Path | None,
    options: RunOptions,
    threads: int,
    device: str = "cpu",
) -> None:
    """Entry point of one worker process (spawned; everything it needs is passed in)."""
    import sys

    from harness.util.signals import EXIT_TERMINATED, Terminated, cooperative

    _enter_worker(threads, device)
    try:
        experiment = Experiment(config, data_dir, options.cache_dir, progress=False, device=torch.device(device))

        def log(line: str) -> None:
            print(f"[worker {index}] {line}", flush=True)

        with cooperative():
            Runner(config, Storage(url), experiment, options, log=log).run()
    except HarnessError as error:
        print(f"error: [worker {index}] {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:  # its point was given back (see Runner.run_points)
        sys.exit(EXIT_TERMINATED if isinstance(interrupt, Terminated) else 130)


def _enter_worker(threads: int, device: str) -> None:
    """What a spawned process does first: SIGTERM acts like Ctrl-C, the libraries are quiet, ``threads`` torch
    threads, and the process's CUDA device (``cuda:N``) is the current one."""
    from harness.util.quiet import quiet_libraries
    from harness.util.signals import terminate_like_interrupt

    terminate_like_interrupt()
    quiet_libraries(transformers=True)
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))


def run_workers(
    count: int,
    config: StudyConfig,
    url: str,
    data_dir: Path | None,
    options: RunOptions,
    devices: list[int] | None = None,
    log=print,
) -> int:
    """Run ``count`` worker processes on this machine and wait for them; returns the worst exit code."""
    import multiprocessing

    placed = assign_devices(count, torch.cuda.device_count() if torch.cuda.is_available() else 0, devices)
    if placed[0] != "cpu":
        log("workers on " + ", ".join(f"{i}: {d}" for i, d in enumerate(placed)))
    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // count)
    processes = [
        context.Process(target=_worker_main, args=(i, config, url, data_dir, options, threads, placed[i]))
        for i in range(count)
    ]
    for process in processes:
        process.start()
    from harness.util.signals import Terminated, wait

    bar = SweepProgress(config, url)
    try:
        while any(process.is_alive() for process in processes):
            wait(0.5)  # wakes at once on SIGTERM
            bar.update()
        bar.update(force=True)
    except KeyboardInterrupt as interrupt:  # Ctrl-C reaches the workers by itself; SIGTERM is passed on
        if isinstance(interrupt, Terminated):
            for process in processes:
                if process.is_alive():
                    process.terminate()
        for process in processes:
            process.join()
        raise
    finally:
        bar.close()
    return max(abs(process.exitcode or 0) for process in processes)


class SweepProgress:
    """The parent's one progress bar over its workers (theirs are off): grid points done of the study file's
    total, trials running, and tqdm's ETA from the rate so far; read from the database every ``every``
    seconds on a terminal, every :data:`LOG_EVERY` seconds when stderr is a file (one line each there)."""

    LOG_EVERY = 60.0

    def __init__(self, config: StudyConfig, url: str, every: float = 5.0):
        import sys

        from tqdm.auto import tqdm

        from harness.sweep.sharing import plan

        if not sys.stderr.isatty():
            every = max(every, self.LOG_EVERY)
        self.names = [config.study_name(method) for method in config.methods]
        self.storage, self.every, self.last = Storage(url, with_optuna=False), every, 0.0
        total = sum(size for size, _ in plan(config).values())
        self.bar = tqdm(total=total, desc=f"{config.name}/{config.task}", unit="point", dynamic_ncols=True)

    def update(self, force: bool = False) -> None:
        import time

        if not force and time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        try:
            rows = [row for name in self.names for row in self.storage.points(name)]
        except Exception:  # noqa: BLE001 - a progress bar never stops a sweep
            return
        self.bar.set_postfix(running=sum(row["state"] == "claimed" for row in rows), refresh=False)
        self.bar.n = sum(row["state"] == "done" for row in rows)
        self.bar.refresh()  # one write per update

    def close(self) -> None:
        self.bar.close()


def _prepare_main(config: StudyConfig, data_dir: Path | None, cache_dir: Path, threads: int, device: str) -> None:
    """Entry point of one ``prepare`` process: one study file's teacher and teacher-output cache."""
    import sys

    from harness.util.signals import EXIT_TERMINATED, Terminated, cooperative

    _enter_worker(threads, device)
    try:
        with cooperative():
            experiment = Experiment(config, data_dir, cache_dir, progress=False, device=torch.device(device))
            experiment.prepare_shared()
        print(f"{config.name}/{config.task}: teacher {config.teacher} ready ({experiment.teacher.key()})", flush=True)
    except HarnessError as error:
        print(f"error: {config.name}/{config.task}: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:
        sys.exit(EXIT_TERMINATED if isinstance(interrupt, Terminated) else 130)


def prepare_in_parallel(jobs: list[tuple[StudyConfig, Path | None]], cache_dir: Path, placed: list[str]) -> int:
    """``prepare --workers K``: the teachers of ``jobs`` (config, data folder), ``len(placed)`` at a time, each
    process on its device; two files with the same teacher wait for each other on the teacher's file lock.
    Returns the worst exit code."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // len(placed))
    worst = 0
    for start in range(0, len(jobs), len(placed)):
        batch = [
            context.Process(target=_prepare_main, args=(config, data_dir, cache_dir, threads, placed[i]))
            for i, (config, data_dir) in enumerate(jobs[start : start + len(placed)])
        ]
        for process in batch:
            process.start()
        for process in batch:
            process.join()
        worst = max([worst, *(abs(process.exitcode or 0) for process in batch)])
    return worst
