"""Many sets at once: every input set a task on a Dask cluster, each run by the single-set recipe.

The client plans every set first (:meth:`MasterFlatRecipe.plan`: verified inputs and product names,
nothing reduced), reports sets whose products already exist as skipped and sets whose inputs are
wrong as failed, then submits one task per remaining set. A task runs the whole recipe in the worker
process, exactly as a single ``soxspipe mflat`` would (same products, log, QC table and rerun
command), so a worker pays the imports once for all its sets. The recipe knows nothing about Dask.

By default the cluster is a local one: worker processes with one thread each, as many as there are
cores and as memory allows (:func:`set_memory_mb`). ``--scheduler`` uses an existing cluster instead;
its workers must see the inputs and the output folder at the same paths (a shared file system).
A worker that dies mid-set (killed, out of memory) is replaced and its set redone by the scheduler,
up to :data:`ALLOWED_FAILURES` times; products are written to temporaries and renamed, so a killed
attempt leaves no half-written product.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import psutil
from distributed import Client, LocalCluster, as_completed
from tqdm import tqdm

from soxs_mflat.errors import UserInputError
from soxs_mflat.inputs import VerifiedInputs
from soxs_mflat.products import QC_SUBDIR
from soxs_mflat.qc import failed
from soxs_mflat.recipe import LOGGER, MasterFlatRecipe
from soxs_mflat.sof import InputSet, parse_input_frames
from soxs_mflat.transaction import ProductTransaction

if TYPE_CHECKING:
    import pandas as pd

ALLOWED_FAILURES = 3
"""Times a set may lose its worker (killed, out of memory) before it is reported as crashed (local cluster)."""
LOCAL_CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
"""Dask settings of the local cluster. Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` by
default, which turns off glibc's adaptive mmap threshold: every large array is then a fresh mapping, ~1.2 GB
of page faults per SOXS VIS set, nearly doubling its CPU time. Local workers start with the user's
environment for it instead, as a single run does (``docs/many-nights.md`` says how for an external cluster)."""
BASE_MEMORY_MB = 450.0
"""Fixed part of a set's peak memory: the interpreter and libraries (~50 MB) plus working arrays whose size
does not follow the frame size (the scattered-light fit peaks at ~0.5 GB on X-shooter NIR)."""
BYTES_PER_PIXEL = 60.0
"""Working arrays per prepared-frame pixel (float32/float64 images of the stack, edges, background, mask)."""
BYTES_PER_FRAME_PIXEL = 2.0
"""The stack cube: each flat or lamp-off frame kept as 16-bit integers."""
MEMORY_MARGIN = 0.8
"""Share of the available memory the workers may plan to use."""
STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED, STATUS_CRASHED = "done", "skipped", "failed", "crashed"


@dataclass(frozen=True)
class SetJob:
    """One set to reduce and everything a worker needs to run it as a single ``soxspipe mflat`` would."""

    name: str
    arm: str
    input_set: InputSet
    settings_file: Path | None
    output_dir: Path | None
    overwrite: bool
    command: str
    memory_mb: float
    """Estimated peak (:func:`set_memory_mb`)."""


@dataclass(frozen=True)
class SetOutcome:
    """How one set ended: ``status`` is done, skipped, failed (user input) or crashed (a bug or a lost worker).

    ``qc`` is pass/fail for reduced sets, ``detail`` the failed QC metrics or the error, ``log`` a traceback;
    ``cpu_seconds`` counts every thread of the worker during the set, ``peak_mb`` the worker's peak so far.
    """

    name: str
    arm: str
    status: str
    seconds: float = math.nan
    cpu_seconds: float = math.nan
    qc: str = ""
    detail: str = ""
    worker: str = ""
    peak_mb: float = math.nan
    log: str = ""


@dataclass(frozen=True)
class BatchPlan:
    """Sets to submit, and the outcomes already known before any reduction (skipped, bad input)."""

    jobs: list[SetJob]
    known: list[SetOutcome]
    qc_dirs: list[Path]


def set_memory_mb(inputs: VerifiedInputs) -> float:
    """Estimated peak memory (MB) of reducing ``inputs`` in one process, from its frame size and count.

    ``BASE_MEMORY_MB + pixels × (BYTES_PER_PIXEL + BYTES_PER_FRAME_PIXEL × frames)``, with ``pixels``
    those of one prepared frame. It bounds the measured peaks (``docs/many-nights.md``): 200 MB for SOXS
    VIS, 260 MB SOXS NIR, 490 MB X-shooter VIS, 540 MB X-shooter NIR, 560 MB X-shooter UVB (5 flats).
    """
    rows, columns = inputs.detector.prepared_shape(*inputs.binning)
    frames = sum(len(s.flats) for s in inputs.lamp_sets) + len(inputs.darks)
    return BASE_MEMORY_MB + rows * columns * (BYTES_PER_PIXEL + BYTES_PER_FRAME_PIXEL * frames) / 1e6


def plan_batch(set_arguments: Iterable[str], *, cwd: Path, settings_file: Path | None, output_dir: Path | None,
               overwrite: bool, command_for: Callable[[InputSet, Path], str]) -> BatchPlan:
    """Plan every set on the client: skip those whose products exist (unless ``overwrite``), report bad inputs.

    ``set_arguments`` are single sets (``soxs_mflat.cli.set_arguments``).

    A set whose master flat, order table and log exist was reduced (the log is written last) and is
    skipped. A submitted set runs with overwrite on when none of its products existed, so that a retry
    after a lost worker may replace what the lost attempt had already renamed into place; a set with
    some products but no log runs without, and the recipe refuses as a single run would.
    ``command_for(input_set, root)`` gives the command that reruns one set alone (its log's last line).
    """
    jobs, known, qc_dirs = [], [], []
    claimed: dict[Path, str] = {}
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # planning repeats the recipe's first log lines; the set's own log has them
    try:
        for argument in set_arguments:
            try:
                item = parse_input_frames(argument, cwd=cwd)
                inputs, paths = MasterFlatRecipe(item, settings_file=settings_file, output_dir=output_dir).plan()
            except UserInputError as error:
                name = Path(argument).stem if argument.lower().endswith(".sof") else argument
                known.append(SetOutcome(name, "", STATUS_FAILED, detail=str(error)))
                continue
            name = paths.stem
            if paths.qc_dir not in qc_dirs:
                qc_dirs.append(paths.qc_dir)
            other = claimed.setdefault(paths.master_flat(), item.source)
            if other != item.source:
                known.append(SetOutcome(name, inputs.arm, STATUS_FAILED, detail=(
                    f"{item.source} would write the same products as {other} ({paths.master_flat()}). Rename one of "
                    "the SOF files (products are named after it) or reduce them into different output directories.")))
                continue
            existing = paths.existing(s.lamp for s in inputs.lamp_sets)
            if not overwrite and {paths.master_flat(), paths.order_table(), paths.log()} <= set(existing):
                known.append(SetOutcome(name, inputs.arm, STATUS_SKIPPED, qc=_recorded_verdict(paths.qc_table()),
                                        detail=f"products exist in {paths.products_dir}"))
                continue
            jobs.append(SetJob(name, inputs.arm, item, settings_file, output_dir, overwrite or not existing,
                               command_for(item, paths.products_dir.parent.parent), set_memory_mb(inputs)))
    finally:
        LOGGER.setLevel(level)
    return BatchPlan(jobs, known, qc_dirs)


def _recorded_verdict(qc_table: Path) -> str:
    """pass/fail from the qc_flag column of an earlier run's QC table (empty if unreadable)."""
    import pandas as pd

    try:
        flags = pd.read_csv(qc_table, usecols=["qc_flag"])["qc_flag"]
    except (OSError, ValueError):
        return ""
    return "fail" if (flags == "fail").any() else "pass"


def reduce_set(job: SetJob) -> SetOutcome:
    """Run one set through the recipe in this process (a Dask task); never raises for the set's own errors."""
    started, cpu_started = time.monotonic(), time.process_time()
    recipe = MasterFlatRecipe(job.input_set, settings_file=job.settings_file, output_dir=job.output_dir,
                              overwrite=job.overwrite, command=job.command)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def outcome(status: str, **details: str) -> SetOutcome:
        return SetOutcome(job.name, job.arm, status, time.monotonic() - started, time.process_time() - cpu_started,
                          worker=worker, peak_mb=peak_memory_mb(), **details)

    try:
        result = recipe.run()
    except UserInputError as error:
        return outcome(STATUS_FAILED, detail=str(error))
    except Exception as error:  # a bug: reported with its traceback, the other sets go on
        return outcome(STATUS_CRASHED, detail=f"{type(error).__name__}: {error}", log=traceback.format_exc())
    failures = failed(result.qc)
    return outcome(STATUS_DONE, qc="fail" if failures else "pass", detail=", ".join(dict.fromkeys(r.name for r in failures)))


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MB): Linux's VmHWM, which (unlike ``ru_maxrss``) does not
    count the parent's memory before the worker process was started; ``ru_maxrss`` elsewhere."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def local_workers(jobs: list[SetJob], *, requested: int | None) -> tuple[int, str]:
    """How many local workers to start, and why: the cores (or ``requested``), never more than the sets
    to reduce, nor than :data:`MEMORY_MARGIN` of the available memory holds at the largest set's peak."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    wanted = min(requested or cores, len(jobs))
    largest = max(job.memory_mb for job in jobs)
    available = psutil.virtual_memory().available / 2**20
    fits = max(1, int(MEMORY_MARGIN * available // largest))
    if fits < wanted:
        return fits, (f"{fits} worker(s): {available:.0f} MB available and a set may need up to {largest:.0f} MB "
                      f"(asked for {wanted})")
    return wanted, f"{wanted} worker(s) on {cores} core(s)"


@contextlib.contextmanager
def cluster_client(*, scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client on the scheduler at ``scheduler``, or on a local cluster of ``workers`` single-threaded
    worker processes that is shut down (every process stopped) on leaving. Dask's own INFO messages are
    kept off the terminal."""
    engine_log = logging.getLogger("distributed")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)
    try:
        with _client(scheduler=scheduler, workers=workers) as client:
            yield client
    finally:
        engine_log.setLevel(level)


@contextlib.contextmanager
def _client(*, scheduler: str | None, workers: int) -> Iterator[Client]:
    if scheduler is None:
        with (dask.config.set(LOCAL_CLUSTER_CONFIG),
              LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR) as cluster,
              Client(cluster) as client):
            yield client
        return
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as error:
        raise UserInputError(
            f"No Dask scheduler answers at {scheduler} ({error}). Start one (`dask scheduler`, then `dask worker "
            f"{scheduler}` on each machine) or leave out --scheduler to use the local cores."
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=120)
        except TimeoutError:
            raise UserInputError(
                f"The Dask scheduler at {scheduler} has no worker after 2 minutes. Start workers with "
                f"`dask worker {scheduler}` where the inputs and the output folder are visible at the same paths."
            ) from None
        yield client


def run_jobs(client: Client, jobs: list[SetJob], *, on_finished: Callable[[SetOutcome], None]) -> list[SetOutcome]:
    """Submit one task per set (largest first) and collect the outcomes as they finish.

    A task lost more often than the scheduler allows (its worker died each time) is a crashed set.
    """
    futures = {
        client.submit(reduce_set, job, key=f"soxs-mflat-{job.name}-{os.getpid()}-{index}", pure=False,
                      priority=int(job.memory_mb)): job
        for index, job in enumerate(jobs)
    }
    outcomes = []
    for future in as_completed(futures):
        job = futures[future]
        try:
            outcome = future.result()
        except Exception as error:  # KilledWorker, a worker without soxs_mflat, a lost connection
            outcome = SetOutcome(job.name, job.arm, STATUS_CRASHED, detail=f"{type(error).__name__}: {error}")
        outcomes.append(outcome)
        on_finished(outcome)
    return outcomes


@contextlib.contextmanager
def progress(total: int) -> Iterator[Callable[[SetOutcome], None]]:
    """A callback reporting each finished set: a tqdm bar (counts, rate, ETA) when stderr is a terminal,
    else one line per set."""
    if sys.stderr.isatty():
        with tqdm(total=total, unit="set", file=sys.stderr, desc="mflat", dynamic_ncols=True) as bar:
            def update(outcome: SetOutcome) -> None:
                if outcome.status != STATUS_DONE:
                    bar.write(finished_line(outcome), file=sys.stderr)
                bar.update(1)
            yield update
        return
    count = 0

    def report(outcome: SetOutcome) -> None:
        nonlocal count
        count += 1
        print(f"[{count}/{total}] {finished_line(outcome)}", file=sys.stderr, flush=True)
    yield report


def finished_line(outcome: SetOutcome) -> str:
    """One line about a finished set."""
    facts = [outcome.arm] if outcome.arm else []
    facts += [f"{outcome.seconds:.1f} s"] if math.isfinite(outcome.seconds) else []
    text = f"{outcome.status} {outcome.name}" + (f" ({', '.join(facts)})" if facts else "")
    if outcome.qc:
        text += f" QC {outcome.qc}" + (f": {outcome.detail}" if outcome.qc == "fail" else "")
    elif outcome.detail:
        text += f": {first_line(outcome.detail)}"
    return text


def first_line(text: str, *, limit: int = 160) -> str:
    """The first sentence or line of an error message, cut to ``limit`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    sentence = line.split(". ")[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


def run_batch(set_arguments: list[str], *, cwd: Path, settings_file: Path | None, output_dir: Path | None,
              overwrite: bool, workers: int | None, scheduler: str | None,
              command_for: Callable[[InputSet, Path], str], verbose: bool) -> int:
    """Plan, reduce and summarise every set; return the exit status (see :func:`exit_status`)."""
    started, stamp = time.monotonic(), time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    plan = plan_batch(set_arguments, cwd=cwd, settings_file=settings_file, output_dir=output_dir,
                      overwrite=overwrite, command_for=command_for)
    skipped = sum(o.status == STATUS_SKIPPED for o in plan.known)
    if skipped:
        print(f"Skipping {skipped} set(s) whose products already exist (-x reduces them again).", file=sys.stderr)
    for outcome in plan.known:
        if outcome.status != STATUS_SKIPPED:
            print(finished_line(outcome), file=sys.stderr)
    outcomes, engine = list(plan.known), "none (nothing to reduce)"
    if plan.jobs:
        count, engine = (0, f"the Dask scheduler at {scheduler}") if scheduler else local_workers(plan.jobs, requested=workers)
        print(f"Reducing {len(plan.jobs)} set(s) on {engine}", file=sys.stderr)
        with cluster_client(scheduler=scheduler, workers=count) as client, progress(len(plan.jobs)) as report:
            outcomes += run_jobs(client, plan.jobs, on_finished=report)
    if verbose:
        for outcome in outcomes:
            if outcome.log:
                print(f"{outcome.name}:\n{outcome.log}", file=sys.stderr)
    table = summary_table(outcomes)
    elapsed = time.monotonic() - started
    qc_dirs = plan.qc_dirs or [(output_dir or cwd) / QC_SUBDIR]
    meta = {"started_utc": stamp, "wall_seconds": round(elapsed, 2), "engine": engine,
            "sets_per_minute": round(60 * sum(o.status == STATUS_DONE for o in outcomes) / elapsed, 2)}
    written = [write_summary(table, folder / f"soxs-mflat_batch_{stamp}", meta) for folder in qc_dirs]
    counts = table["status"].value_counts()
    print(f"\n# SOXS-MFLAT BATCH SUMMARY\n{format_summary(table)}\n")
    print(f"{len(table)} set(s): " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
          (STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED, STATUS_CRASHED)) + f" in {elapsed:.1f} s")
    print("Summary: " + ", ".join(str(p) for pair in written for p in pair))
    return exit_status(outcomes)


def exit_status(outcomes: Iterable[SetOutcome]) -> int:
    """0 when every set was reduced or skipped; 1 when a set crashed (a bug, or its worker was lost too
    often); else 2 when a set failed for a reason the user can fix."""
    statuses = {o.status for o in outcomes}
    return 1 if STATUS_CRASHED in statuses else 2 if STATUS_FAILED in statuses else 0


def summary_table(outcomes: Iterable[SetOutcome]) -> pd.DataFrame:
    """One row per set, sorted by name (data-organiser names start with the date): set, arm, status,
    seconds, qc, detail, plus worker, cpu_seconds and peak_mb. pandas is loaded here, never in the workers."""
    import pandas as pd

    rows = [{"set": o.name, "arm": o.arm, "status": o.status, "seconds": round(o.seconds, 2), "qc": o.qc,
             "detail": o.detail, "worker": o.worker, "cpu_seconds": round(o.cpu_seconds, 2), "peak_mb": round(o.peak_mb, 1)}
            for o in outcomes]
    columns = ["set", "arm", "status", "seconds", "qc", "detail", "worker", "cpu_seconds", "peak_mb"]
    return pd.DataFrame(rows, columns=columns).sort_values("set", kind="stable", ignore_index=True)


def format_summary(table: pd.DataFrame) -> str:
    """The summary for the terminal: failed metrics or the error's first sentence in ``detail``."""
    shown = table[["set", "arm", "status", "seconds", "qc", "detail"]].copy()
    shown["seconds"] = shown["seconds"].map(lambda v: "" if math.isnan(v) else f"{v:.1f}")
    shown["detail"] = [d if s == STATUS_SKIPPED else first_line(d, limit=100) for s, d in zip(
        table["status"], table["detail"], strict=True)]
    left = {column: f"{{:<{max(shown[column].str.len().max(), len(column))}}}".format
            for column in ("set", "arm", "status", "qc", "detail") if len(shown)}
    return "\n".join(line.rstrip() for line in shown.to_string(index=False, justify="left", formatters=left).splitlines())


def write_summary(table: pd.DataFrame, stem: Path, meta: dict) -> tuple[Path, Path]:
    """The summary as ``<stem>.csv`` and ``<stem>.json`` (with ``meta``), each written atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(table.to_json(orient="records"))
    with ProductTransaction() as transaction:
        csv = transaction.stage_text(stem.with_suffix(".csv"), table.to_csv(index=False))
        summary = transaction.stage_text(stem.with_suffix(".json"), json.dumps({**meta, "sets": records}, indent=1) + "\n")
        transaction.commit()
    return csv, summary
