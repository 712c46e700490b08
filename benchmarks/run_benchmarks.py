"""Speed and memory of soxs_mflat against soxspipe 0.19.0 on simulated sets.

Each set is simulated once (in a child process); then each tool reduces it ``--runs`` times in a
fresh process, the two tools taking turns (this machine's speed drifts by tens of per cent over
minutes, so back-to-back blocks of runs would bias the ratio). Per run this records the wall time,
the peak resident memory the kernel reports for the tool's process (``os.wait4``), and the peak of
the summed resident memory of the tool's whole process tree, sampled every 10 ms (any child
process counts). The report gives medians and the ratios soxspipe / soxs_mflat. soxspipe runs
from ``.venv-soxspipe`` (``make interop`` builds it); without it only soxs_mflat is measured.

This measuring process imports nothing heavy and simulates nothing itself: a child started with
``vfork``/``exec`` inherits its parent's peak RSS as its own starting ``ru_maxrss`` on Linux, so a
big parent would inflate every measurement.

Usage: python benchmarks/run_benchmarks.py [--runs N] [--sets soxs:VIS,soxs:NIR,xsh:VIS,xsh:NIR,xsh:UVB] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / ".venv" / "bin" / "soxspipe"
THEIRS = ROOT / ".venv-soxspipe" / "bin" / "soxspipe"
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _children(pid: int) -> list[int]:
    """Direct children of process ``pid``, from each of its threads' ``children`` file (Linux ≥ 3.5)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
        except (OSError, ValueError):
            continue
    return found


def _tree_rss_mb(root: int) -> float:
    """Summed resident memory (MB) of process ``root`` and all its descendants.

    Walking the ``children`` files costs ~0.1 ms a sample; scanning every process in /proc cost
    ~2 ms, CPU taken from the measured tool every 10 ms.
    """
    members, frontier = {root}, [root]
    while frontier:
        children = [pid for pid in _children(frontier.pop()) if pid not in members]
        members.update(children)
        frontier += children
    total = 0.0
    for pid in members:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE_MB
        except (OSError, IndexError, ValueError):
            continue
    return total


def measure(command: list[str], *, cwd: Path) -> dict:
    """Wall seconds, kernel peak RSS (MB), sampled peak tree RSS (MB) and exit status of one run."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(process.pid))
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"seconds": elapsed, "maxrss_mb": usage.ru_maxrss / 1024.0, "tree_mb": peak[0],
            "status": os.waitstatus_to_exitcode(status)}


def prepare(work: Path, instrument: str, arm: str) -> tuple[Path, Path, Path]:
    """Simulate one set and write both tools' settings, in a child process; return (SOF, ours, theirs)."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from accuracy import soxspipe_settings, THEIRS; from soxs_mflat.simulate import simulate_set;"
        "made = simulate_set(Path(sys.argv[2]), instrument=sys.argv[3], arm=sys.argv[4]);"
        "theirs = Path(sys.argv[2]) / 'soxspipe_reference.yaml';"
        "THEIRS.exists() and soxspipe_settings(made.settings, theirs);"
        "print(made.sof); print(made.settings); print(theirs)"
    )
    target = work / f"{instrument}_{arm}" / "raw"
    shutil.rmtree(target, ignore_errors=True)
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks"), str(target), instrument, arm],
                            capture_output=True, text=True, check=True)
    sof, ours, theirs = (Path(line) for line in result.stdout.strip().splitlines()[-3:])
    return sof, ours, theirs


def run_once(tool: Path, sof: Path, settings: Path, target: Path) -> dict:
    """Reduce the set once with ``tool`` into a fresh output folder ``target``."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy(settings, target / "soxspipe.yaml")
    command = [str(tool), "mflat", str(sof), "-o", str(target), "-s", str(target / "soxspipe.yaml"), "-x"]
    measured = measure(command, cwd=sof.parent)
    measured["product"] = any(target.rglob("*MFLAT*.fits"))
    return measured


def summary(runs: list[dict]) -> dict:
    """Medians over the runs that wrote a master flat."""
    ok = [r for r in runs if r["product"]]

    def median(key: str) -> float | None:
        return round(statistics.median(r[key] for r in ok), 3) if ok else None

    return {
        "runs": len(runs),
        "runs_without_product": len(runs) - len(ok),
        "median_seconds": median("seconds"),
        "median_maxrss_mb": median("maxrss_mb"),
        "median_tree_mb": median("tree_mb"),
        "all_seconds": [round(r["seconds"], 2) for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sets", default="soxs:VIS,soxs:NIR,xsh:VIS,xsh:NIR,xsh:UVB")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    report = {}
    for item in args.sets.split(","):
        instrument, arm = item.split(":")
        sof, ours, theirs = prepare(args.output, instrument, arm)
        tools = [(name, tool, settings) for name, tool, settings in (("soxs_mflat", OURS, ours),
                                                                      ("soxspipe", THEIRS, theirs)) if tool.exists()]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in tools}
        for run in range(args.runs):  # the tools take turns, so a drift in the machine's speed hits both alike
            for name, tool, settings in tools:
                target = args.output / f"{instrument}_{arm}" / name / f"run{run}"
                runs[name].append(run_once(tool, sof, settings, target))
        row = {name: summary(results) for name, results in runs.items()}
        mine, reference = row.get("soxs_mflat", {}), row.get("soxspipe", {})
        if mine.get("median_seconds") and reference.get("median_seconds"):
            row["speedup"] = round(reference["median_seconds"] / mine["median_seconds"], 2)
            row["memory_ratio"] = round(mine["median_tree_mb"] / reference["median_tree_mb"], 3)
        report[f"{instrument} {arm}"] = row
        print(f"{instrument} {arm}: {json.dumps(row)}", flush=True)
    (args.output / "benchmark.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
