"""Batch throughput on a simulated 20-set archive (not CI): 1 and 2 local workers, warm against cold, memory.

Measures, on a ``soxspipe simulate archive`` of 10 SOXS nights × (VIS, NIR) with its three broken sets:

* the time to write the archive;
* each good set reduced alone by a cold ``soxspipe mflat <sof>`` command (wall time, CPU time and peak
  memory from ``os.wait4``), and the bytes it reads (its input files) and writes (its products);
* the whole archive reduced by one batch command with ``--workers=1`` and ``--workers=2``: wall time,
  sets per minute, each set's time and CPU time in its warm worker (from the batch's JSON summary),
  and each worker process's peak memory (``VmHWM`` from ``/proc``, sampled until the worker exits); on a
  machine shared with other jobs wall times are inflated, so the CPU-bound 2-worker speedup
  (2 × the sets' CPU seconds with 1 worker / with 2) is reported too, with the load averages;
* the same sets one by one with soxspipe 0.19.0 when ``.venv-soxspipe`` exists (``make interop``).

Targets (issue 15): 2 workers ≥ 1.7 × the throughput of 1; a warm set ≤ 0.7 × the cold command;
batch ≥ 20 × soxspipe's one-by-one throughput; worker peak ≤ single-run peak + 100 MB.

This process stays small (nothing heavy imported, nothing simulated in it): a child process inherits
its parent's peak RSS as its starting ``ru_maxrss`` on Linux.

Usage: python benchmarks/batch_throughput.py [--output DIR] [--nights N] [--keep] [--reuse-archive]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SOXSPIPE_0_19 = ROOT / ".venv-soxspipe" / "bin" / "soxspipe"


def _command(*arguments: str) -> list[str]:
    return [PYTHON, "-m", "soxs_mflat", *arguments]


def _run(command: list[str], *, env: dict) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak RSS (MB) and exit status of one child process."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        for task in os.listdir(f"/proc/{current}/task") if os.path.isdir(f"/proc/{current}/task") else ():
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    children = [int(c) for c in handle.read().split()]
            except OSError:
                continue
            found += children
            frontier += children
    return found


def _high_water_mb(pid: int) -> tuple[str, float] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode()
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return cmdline, int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _batch(archive: Path, out: Path, workers: int, *, env: dict) -> dict:
    """Run one batch command; return its wall time, summary and each worker's peak memory."""
    command = _command("mflat", str(archive / "sof"), "-o", str(out), "-s", str(archive / "soxspipe.yaml"),
                       f"--workers={workers}")
    peaks: dict[int, float] = {}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in _descendants(process.pid):
                found = _high_water_mb(pid)
                if found is not None and "spawn_main" in found[0]:
                    peaks[pid] = max(peaks.get(pid, 0.0), found[1])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    summary = json.loads(sorted((out / "qc" / "soxs_mflat").glob("soxs-mflat_batch_*.json"))[-1].read_text())
    sets = [s for s in summary["sets"] if s["status"] == "done"]
    used = {int(s["worker"].rsplit(":", 1)[1]) for s in sets}
    return {"workers": workers, "exit_status": os.waitstatus_to_exitcode(status), "wall_seconds": wall,
            "tree_peak_mb": usage.ru_maxrss / 1024, "sets_done": len(sets), "sets_per_minute": 60 * len(sets) / wall,
            "cpu_seconds_sets": sum(s["cpu_seconds"] for s in sets), "load_average_after": os.getloadavg(),
            "worker_peak_mb": sorted(peak for pid, peak in peaks.items() if pid in used), "per_set": {s["set"]: s for s in sets}}


def _set_bytes(archive: Path, sof: Path, products: Path, stem: str) -> tuple[int, int]:
    """Bytes of a set's inputs (every file in its SOF) and of its products (FITS, log, QC table and PDFs)."""
    read = sum((sof.parent / line.split()[0]).stat().st_size for line in sof.read_text().splitlines() if line.strip())
    olo_stem = stem.replace("MFLAT", "OLOC")
    written = sum(p.stat().st_size for folder in (products / "products" / "soxs_mflat", products / "qc" / "soxs_mflat")
                  for p in folder.iterdir() if p.name.startswith((stem, olo_stem)))
    return read, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--reuse-archive", action="store_true", help="reduce the archive already in the work folder")
    args = parser.parse_args()
    work = args.output or Path(tempfile.mkdtemp(prefix="batch_throughput_"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    archive = work / "archive"
    simulate_wall = simulate_cpu = float("nan")
    if not (args.reuse_archive and (archive / "archive.json").exists()):
        shutil.rmtree(archive, ignore_errors=True)
        simulate_wall, simulate_cpu, _, status = _run(_command("simulate", "archive", str(archive),
                                                               f"--nights={args.nights}"), env=env)
        assert status == 0, "simulating the archive failed"
    manifest = json.loads((archive / "archive.json").read_text())
    good = [s for s in manifest["sets"] if s["expected"] == "done"]
    report: dict = {"archive": {"sets": len(manifest["sets"]), "good": len(good), "wall_seconds": simulate_wall,
                                "cpu_seconds": simulate_cpu}, "load_average_start": os.getloadavg()}
    print(f"archive: {len(manifest['sets'])} sets written in {simulate_wall:.1f} s (CPU {simulate_cpu:.1f} s)", flush=True)

    cold_root = work / "cold"
    cold = {}
    for entry in good:
        sof = archive / entry["sof"]
        wall, cpu, peak, status = _run(_command("-x", "mflat", str(sof), "-o", str(cold_root), "-s",
                                                str(archive / "soxspipe.yaml")), env=env)
        read, written = _set_bytes(archive, sof, cold_root, entry["stem"])
        cold[entry["stem"]] = {"arm": entry["arm"], "binning": entry["binning"], "wall_seconds": wall, "cpu_seconds": cpu,
                               "peak_mb": peak, "status": status, "bytes_read": read, "bytes_written": written}
        print(f"cold {entry['stem']}: {wall:.2f} s, CPU {cpu:.2f} s, {peak:.0f} MB", flush=True)
    report["cold"] = cold

    batches = {}
    for workers in (1, 2):
        out = work / f"batch{workers}"
        shutil.rmtree(out, ignore_errors=True)
        batches[workers] = _batch(archive, out, workers, env=env)
        result = batches[workers]
        print(f"batch {workers} worker(s): {result['wall_seconds']:.1f} s, {result['sets_per_minute']:.1f} sets/min, "
              f"worker peaks {[round(p) for p in result['worker_peak_mb']]} MB", flush=True)
    report["batch"] = {str(k): v for k, v in batches.items()}

    warm = batches[1]["per_set"]
    ratios = [warm[stem]["seconds"] / cold[stem]["wall_seconds"] for stem in cold if stem in warm]
    cpu_ratios = [warm[stem]["cpu_seconds"] / cold[stem]["cpu_seconds"] for stem in cold if stem in warm]
    single_peak = max(c["peak_mb"] for c in cold.values())
    summary = {
        "speedup_2_vs_1": batches[2]["sets_per_minute"] / batches[1]["sets_per_minute"],
        "speedup_2_vs_1_cpu_bound": 2 * batches[1]["cpu_seconds_sets"] / batches[2]["cpu_seconds_sets"],
        "cold_over_warm_cpu_total": sum(c["cpu_seconds"] for c in cold.values()) / batches[1]["cpu_seconds_sets"],
        "warm_over_cold_median": statistics.median(ratios),
        "warm_over_cold_total": (sum(warm[s]["seconds"] for s in cold if s in warm)
                                 / sum(c["wall_seconds"] for c in cold.values())),
        "warm_over_cold_cpu_median": statistics.median(cpu_ratios),
        "single_run_peak_mb": single_peak,
        "worker_peak_mb": max(max(b["worker_peak_mb"], default=0.0) for b in batches.values()),
        "cpu_seconds_per_set_warm_median": statistics.median(warm[s]["cpu_seconds"] for s in warm),
        "bytes_read_per_set_median": statistics.median(c["bytes_read"] for c in cold.values()),
        "bytes_written_per_set_median": statistics.median(c["bytes_written"] for c in cold.values()),
    }
    if SOXSPIPE_0_19.exists():
        theirs_root = work / "soxspipe"
        theirs_settings = work / "soxspipe_0_19.yaml"
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from pathlib import Path; "
                f"from accuracy import soxspipe_settings; soxspipe_settings(Path({str(archive / 'soxspipe.yaml')!r}), "
                f"Path({str(theirs_settings)!r}))")
        subprocess.run([PYTHON, "-c", code], env=env, check=True)
        started = time.monotonic()
        for entry in good:
            subprocess.run([str(SOXSPIPE_0_19), "mflat", str(archive / entry["sof"]), "-o", str(theirs_root), "-s",
                            str(theirs_settings), "-x"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
        theirs_per_minute = 60 * len(good) / (time.monotonic() - started)
        summary["soxspipe_sets_per_minute"] = theirs_per_minute
        summary["batch2_over_soxspipe"] = batches[2]["sets_per_minute"] / theirs_per_minute
    else:
        summary["soxspipe"] = "skipped: no .venv-soxspipe (make interop builds it)"
    report["summary"] = summary
    (work / "batch_throughput.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"Report: {work / 'batch_throughput.json'}")
    if not args.keep and args.output is None:
        shutil.rmtree(work / "archive")


if __name__ == "__main__":
    main()
