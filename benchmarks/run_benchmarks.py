"""Speed and memory of soxs_mflat against soxspipe 0.19.0 on simulated sets.

Each set is simulated once; then each tool reduces it ``--runs`` times in a fresh process. The wall
time and the peak resident memory of every run come from the operating system (``os.wait4``), and
the report gives medians and the ratios soxspipe / soxs_mflat. soxspipe is run from
``.venv-soxspipe`` (``make interop`` builds it); without it only soxs_mflat is measured.

Usage: python benchmarks/run_benchmarks.py [--runs N] [--sets soxs:VIS,soxs:NIR,xsh:VIS] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from accuracy import OURS, ROOT, THEIRS, soxspipe_settings


def measure(command: list[str], *, cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one run of ``command``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    return elapsed, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status)


def simulate(work: Path, instrument: str, arm: str) -> tuple[Path, Path]:
    """Simulate one set; return its SOF and settings file."""
    from soxs_mflat.simulate import simulate_set

    made = simulate_set(work / f"{instrument}_{arm}" / "raw", instrument=instrument, arm=arm)
    return made.sof, made.settings


def run_tool(tool: Path, sof: Path, settings: Path, out: Path, runs: int) -> list[tuple[float, float, int]]:
    """Reduce the set ``runs`` times with ``tool``, each in a fresh output folder."""
    results = []
    for run in range(runs):
        target = out / f"run{run}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if tool == THEIRS:
            soxspipe_settings(settings, target / "soxspipe.yaml")
        else:
            shutil.copy(settings, target / "soxspipe.yaml")
        command = [str(tool), "mflat", str(sof), "-o", str(target), "-s", str(target / "soxspipe.yaml"), "-x"]
        results.append(measure(command, cwd=sof.parent))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sets", default="soxs:VIS,soxs:NIR,xsh:VIS")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    report = {}
    for item in args.sets.split(","):
        instrument, arm = item.split(":")
        sof, settings = simulate(args.output, instrument, arm)
        row = {}
        for name, tool in (("soxs_mflat", OURS), ("soxspipe", THEIRS)):
            if not tool.exists():
                continue
            runs = run_tool(tool, sof, settings, args.output / f"{instrument}_{arm}" / name, args.runs)
            ok = [r for r, folder in zip(runs, range(args.runs), strict=True)
                  if any((args.output / f"{instrument}_{arm}" / name / f"run{folder}").rglob("*MFLAT*.fits"))]
            row[name] = {
                "runs": len(runs),
                "runs_without_product": len(runs) - len(ok),
                "median_seconds": statistics.median(r[0] for r in ok) if ok else None,
                "median_peak_mb": statistics.median(r[1] for r in ok) if ok else None,
                "all_seconds": [round(r[0], 2) for r in runs],
            }
        if row.get("soxspipe", {}).get("median_seconds") and row["soxs_mflat"]["median_seconds"]:
            row["speedup"] = row["soxspipe"]["median_seconds"] / row["soxs_mflat"]["median_seconds"]
            row["memory_ratio"] = row["soxs_mflat"]["median_peak_mb"] / row["soxspipe"]["median_peak_mb"]
        report[f"{instrument} {arm}"] = row
        print(f"{instrument} {arm}: {json.dumps(row)}", flush=True)
    (args.output / "benchmark.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
