"""Accuracy of soxs_mflat (and soxspipe 0.19.0, when installed) against the simulator's truth.

Simulates each set, reduces it with each tool in a fresh folder, scores the products and prints a
markdown table (also written to ``<output>/accuracy.md`` and ``accuracy.json``). soxspipe runs from
``.venv-soxspipe`` with its own default settings carrying our ``soxs-mflat`` values, in a folder that
holds that file as ``soxspipe.yaml``, from the set's folder (soxspipe resolves SOF paths against the
current directory).

Usage: python benchmarks/accuracy.py [--sets soxs:NIR:1x1,...] [--output DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from soxs_mflat.simulate import score, simulate_set

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / ".venv" / "bin" / "soxspipe"
THEIRS = ROOT / ".venv-soxspipe" / "bin" / "soxspipe"
DEFAULT_SETS = "soxs:NIR:1x1,soxs:VIS:1x1,xsh:NIR:1x1,xsh:VIS:1x1,xsh:UVB:1x1,xsh:VIS:2x2,xsh:UVB:2x2"


def soxspipe_settings(ours: Path, target: Path) -> Path:
    """soxspipe's packaged defaults with our soxs-mflat and background blocks (it needs the full file)."""
    import yaml

    instrument = yaml.safe_load(ours.read_text())["instrument"]
    packaged = next((ROOT / ".venv-soxspipe" / "lib").glob(f"python3*/site-packages/soxspipe/{instrument}_default_settings.yaml"))
    content = yaml.safe_load(packaged.read_text())
    mine = yaml.safe_load(ours.read_text())
    content["soxs-mflat"] = mine["soxs-mflat"]
    content["background-subtraction"] = mine["background-subtraction"]
    target.write_text(yaml.safe_dump(content))
    return target


def reduce(tool: Path, sof: Path, settings: Path, folder: Path) -> bool:
    """Run ``tool mflat`` on a set in ``folder``; True if a master flat was written."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    local = folder / "soxspipe.yaml"
    if tool == THEIRS:
        soxspipe_settings(settings, local)
    else:
        shutil.copy(settings, local)
    subprocess.run([str(tool), "mflat", str(sof), "-o", str(folder), "-s", str(local), "-x"], cwd=sof.parent,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return any(folder.rglob("*.fits"))


def row(name: str, tool: str, result: dict) -> str:
    edges, recall = result["all"], result.get("mask_recall") or {}

    def number(value: object, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}g}"

    return (f"| {name} | {tool} | {len(result['orders_found'])}/{len(result['orders_true'])} | "
            f"{number(edges['median'])} / {number(edges['p95'])} / {number(edges['max'])} | "
            f"{number(result.get('flat_error_ratio'))} | {number(100 * (result.get('flat_bias_max_abs') or 0))} % | "
            f"{number(result.get('errs_calibration'))} | {number(result.get('mask_precision'))} | "
            f"{number(recall.get('dead'))} / {number(recall.get('hot_detectable'))} / {number(recall.get('low_sensitivity'))} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=DEFAULT_SETS)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    lines = ["| set | tool | orders | edge error median / p95 / max (px) | flat error ÷ photon noise | "
             "max per-order bias | ERRS pull σ | mask precision | recall dead / hot / low-sens |",
             "|---|---|---|---|---|---|---|---|---|"]
    results = {}
    for item in args.sets.split(","):
        instrument, arm, binning = item.split(":")
        binx, biny = (int(v) for v in binning.split("x"))
        name = f"{instrument} {arm} {binning}"
        work = args.output / "accuracy" / name.replace(" ", "_")
        made = simulate_set(work / "raw", instrument=instrument, arm=arm, binning=(binx, biny), seed=args.seed)
        for label, tool in (("soxs_mflat", OURS), ("soxspipe 0.19.0", THEIRS)):
            if not tool.exists():
                continue
            folder = work / label.split()[0]
            if not reduce(tool, made.sof, made.settings, folder):
                lines.append(f"| {name} | {label} | failed | | | | | | |")
                continue
            result = score(folder, made.truth_dir)
            results[f"{name} {label}"] = result
            lines.append(row(name, label, result))
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "accuracy.md").write_text(table)
    (args.output / "accuracy.json").write_text(json.dumps(results, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
