"""Accuracy of soxs_mflat on randomly drawn simulated sets: data its methods were not tuned on.

For every arm, ``--sets`` sets are simulated with ``variation="random"`` (seeds from ``--first-seed``,
well away from the seeds of development and tests), reduced with this checkout's recipe in a fresh
process and scored against their truth. The report gives, per arm, the distribution (median, 95th
percentile, worst) of every scorer metric, checks the targets of issue 16 on every set, relates each
metric to each varied factor (Spearman rank correlation and the metric's median per tercile of the
factor) and names the factors most likely behind each failing set. ``--ablate N`` re-runs the N worst
failing sets per arm with one group of factors at a time set back to nominal and reports which
groups fix them.

Sets run seed by seed across the arms, so a partial run covers every arm. A drawn number of flats
below ``--min-flats`` (default 5) is raised to it: the recipe refuses fewer, as the data organiser
never builds such a set (``--min-flats 3`` measures that). Each set's result is written to
``<output>/sets/<arm>/<seed>.json`` as soon as it is scored, and sets already scored are skipped,
so an interrupted run resumes where it stopped. The set's frames are deleted after scoring unless
``--keep``. Results: ``<output>/robustness.md`` and ``robustness.json``.

Usage: python benchmarks/robustness.py [--arms soxs:NIR,soxs:VIS,xsh:UVB,xsh:VIS,xsh:NIR] [--sets 50]
       [--first-seed 10000] [--output DIR] [--jobs 1] [--set name=value ...] [--min-flats 5] [--ablate N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import stats

from soxs_mflat.simulate import Variation, score, simulate_set
from soxs_mflat.simulate.variation import RANDOM_KEY
from soxs_mflat.simulate.writer import set_variation

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARMS = "soxs:NIR:1x1,soxs:VIS:1x1,xsh:UVB:1x1,xsh:VIS:1x1,xsh:NIR:1x1"
METRICS: dict[str, tuple[tuple[str, ...], str, float | None]] = {
    "orders_missing": (("orders_missing",), "low", 0),
    "orders_spurious": (("orders_spurious",), "low", 0),
    "edge_median": (("all", "median"), "low", 0.03),
    "edge_p95": (("all", "p95"), "low", 0.08),
    "edge_max": (("all", "max"), "low", 0.25),
    "flat_error_ratio": (("flat_error_ratio",), "low", 1.03),
    "flat_bias_max_abs": (("flat_bias_max_abs",), "low", 0.001),
    "mask_precision": (("mask_precision",), "high", 0.99),
    "recall_dead": (("mask_recall", "dead"), "high", 0.99),
    "recall_low_sensitivity": (("mask_recall", "low_sensitivity"), "high", 0.95),
    "recall_hot_detectable": (("mask_recall", "hot_detectable"), "high", 0.95),
    "dust_masked_fraction": (("dust_masked_fraction",), "low", 0.01),
    "recall_hot": (("mask_recall", "hot"), "high", None),
    "recall_trap": (("mask_recall", "trap"), "high", None),
    "errs_calibration": (("errs_calibration",), "one", None),
    "outlier_fraction_5sigma": (("outlier_fraction_5sigma",), "low", None),
    "background_fraction_outside_tolerance": (("background_fraction_outside_tolerance",), "low", None),
}
"""Metric name: (path in the score, which direction is better, issue 16's target or None)."""
GROUPS = {
    "psf": ("psf_",),
    "slit": ("slit_", "soft_end_", "order_height_scale"),
    "lamp": ("brightness", "order_contrast", "saturated_order_peak", "nflats"),
    "scattered light": ("scatter_", "ghost_"),
    "centre table": ("table_",),
    "bias": ("bias_column", "bias_row", "bias_amplifier", "bias_drift"),
    "cosmic rays": ("cosmic_ray_factor",),
    "defects": ("defect_", "low_sensitivity_range", "hot_rate_range", "bad_columns", "charge_traps", "bias_only_pixels"),
    "dust": ("dust_",),
}
"""Factor groups that ``--ablate`` sets back to nominal one at a time (prefixes of factor names)."""


def metric_values(result: dict | None) -> dict[str, float]:
    """Every metric of a score as a number (NaN when the score lacks it; list lengths for order lists)."""
    values = {}
    for name, (path, _, _) in METRICS.items():
        value = result
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        values[name] = float(len(value)) if isinstance(value, list) else math.nan if value is None else float(value)
    return values


def failed_targets(values: dict[str, float], *, recipe_ok: bool) -> list[str]:
    """Targets a set misses (a metric that could not be scored fails, one with nothing to score passes)."""
    failed = []
    for name, (_, better, target) in METRICS.items():
        value = values[name]
        if target is None or (math.isnan(value) and recipe_ok and name.startswith(("recall_", "dust_"))):
            continue
        if math.isnan(value) or (value > target if better == "low" else value < target):
            failed.append(name)
    return failed


def _split(arm: str) -> tuple[str, str, tuple[int, int]]:
    instrument, arm_name, binning = arm.split(":")
    binx, biny = (int(value) for value in binning.split("x"))
    return instrument, arm_name, (binx, biny)


def with_min_flats(arm: str, seed: int, overrides: dict, min_flats: int) -> dict:
    """``overrides`` plus ``nflats = min_flats`` when the set would draw fewer flats than that."""
    if "nflats" in overrides:
        return overrides
    instrument, arm_name, binning = _split(arm)
    drawn = set_variation({RANDOM_KEY: True, **overrides}, instrument=instrument, arm=arm_name, binning=binning, seed=seed)
    return {**overrides, "nflats": min_flats} if (drawn.nflats or 0) < min_flats else overrides


def run_set(arm: str, seed: int, output: Path, overrides: dict, *, keep: bool, label: str = "") -> dict:
    """Simulate, reduce and score one drawn set; write and return its record."""
    instrument, arm_name, (binx, biny) = _split(arm)
    folder = output / "work" / f"{arm.replace(':', '_')}_{seed}{label}"
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    made = simulate_set(folder / "raw", instrument=instrument, arm=arm_name, binning=(binx, biny), seed=seed,
                        variation={RANDOM_KEY: True, **overrides})
    simulated = time.perf_counter()
    products = folder / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "soxs_mflat", "mflat", str(made.sof), "-o", str(products), "-s",
                          str(made.settings), "-x"], cwd=made.sof.parent, env=env, capture_output=True, text=True,
                         check=False)
    reduced = time.perf_counter()
    result = score(products, made.truth_dir) if run.returncode == 0 else None
    scored = time.perf_counter()
    truth = json.loads((made.truth_dir / "truth.json").read_text())
    values = metric_values(result)
    record = {
        "arm": arm, "seed": seed, "label": label, "overrides": overrides,
        "recipe_exit": run.returncode, "recipe_error": run.stderr[-2000:] if run.returncode else "",
        "simulate_seconds": simulated - started, "recipe_seconds": reduced - simulated, "score_seconds": scored - reduced,
        "variation": made.variation.to_dict(), "factors": made.variation.factor_values(),
        "centre_tables": truth.get("centre_tables"), "near_saturation": truth.get("near_saturation"),
        "metrics": values, "failed": failed_targets(values, recipe_ok=run.returncode == 0), "score": result,
    }
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return record


def _record_path(output: Path, arm: str, seed: int, label: str = "") -> Path:
    return output / "sets" / arm.replace(":", "_") / f"{seed}{label}.json"


def _run_and_save(arm: str, seed: int, output: Path, overrides: dict, keep: bool, label: str = "") -> dict:
    record = run_set(arm, seed, output, overrides, keep=keep, label=label)
    path = _record_path(output, arm, seed, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float))
    print(f"{arm} seed {seed}{label}: simulate {record['simulate_seconds']:.1f}s, recipe {record['recipe_seconds']:.1f}s;"
          f" failed {', '.join(record['failed']) or 'none'}", flush=True)
    return record


def run_all(jobs: list[tuple[str, int, dict, str]], output: Path, *, workers: int, keep: bool) -> None:
    """Run every (arm, seed, overrides, label) job whose record does not exist yet."""
    todo = [job for job in jobs if not _record_path(output, job[0], job[1], job[3]).exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} sets already scored; running {len(todo)}", flush=True)
    if workers <= 1:
        for arm, seed, overrides, label in todo:
            _run_and_save(arm, seed, output, overrides, keep, label)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_and_save, arm, seed, output, overrides, keep, label) for arm, seed, overrides, label in todo]
        for future in futures:
            future.result()


def distribution(values: np.ndarray, better: str) -> dict[str, float | None]:
    """Median, 95th percentile (on the bad side) and worst value of a metric over sets."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": None, "p95": None, "worst": None, "n": 0}
    if better == "one":
        worst = float(values[np.argmax(np.abs(values - 1.0))])
        p95 = float(np.percentile(values, 95 if worst >= 1 else 5))
    else:
        worst = float(values.max() if better == "low" else values.min())
        p95 = float(np.percentile(values, 95 if better == "low" else 5))
    return {"median": float(np.median(values)), "p95": p95, "worst": worst, "n": int(values.size)}


def _within_arm_ranks(records: list[dict], metric: str) -> np.ndarray:
    """The metric as its rank within its arm (0–1, NaN kept), so that arms with different levels pool."""
    values = np.array([record["metrics"][metric] for record in records])
    arms = np.array([record["arm"] for record in records])
    ranks = np.full(values.shape, np.nan)
    for arm in np.unique(arms):
        select = (arms == arm) & np.isfinite(values)
        if select.sum() > 1:
            ranks[select] = (stats.rankdata(values[select]) - 1) / (select.sum() - 1)
    return ranks


def factor_relations(records: list[dict], metric: str) -> list[dict]:
    """Spearman correlation of ``metric`` (ranked within each arm) with every factor, and the metric's
    median per tercile of the factor (per value for factors with at most four values)."""
    ranks = _within_arm_ranks(records, metric)
    values = np.array([record["metrics"][metric] for record in records])
    relations = []
    for factor in records[0]["factors"]:
        x = np.array([record["factors"][factor] for record in records])
        usable = np.isfinite(ranks) & np.isfinite(x)
        if usable.sum() < 4 or np.ptp(x[usable]) == 0 or np.ptp(ranks[usable]) == 0:
            continue
        rho = float(stats.spearmanr(x[usable], ranks[usable]).statistic)
        levels = np.unique(x[usable])
        if levels.size <= 4:
            groups, edges = [x[usable] == level for level in levels], [float(level) for level in levels]
        else:
            cuts = np.quantile(x[usable], [1 / 3, 2 / 3])
            tercile = np.digitize(x[usable], cuts)
            groups, edges = [tercile == k for k in range(3)], [float(cut) for cut in cuts]
        medians = [float(np.median(values[usable][group])) if group.any() else None for group in groups]
        relations.append({"factor": factor, "rho": rho, "group_medians": medians, "group_edges": edges,
                          "by_value": levels.size <= 4})
    return sorted(relations, key=lambda item: -abs(item["rho"]))


def suspects(record: dict, metric: str, relations: list[dict], records: list[dict], count: int = 2) -> list[str]:
    """Factors most associated with ``metric`` for which this set is extreme in the direction that hurts."""
    better = METRICS[metric][1]
    scored = []
    for relation in relations[:12]:
        factor = relation["factor"]
        others = np.array([item["factors"][factor] for item in records])
        others = others[np.isfinite(others)]
        value = record["factors"][factor]
        rank = float(np.mean(others < value) + 0.5 * np.mean(others == value))
        harm = relation["rho"] * (rank - 0.5) * (1.0 if better == "low" else -1.0)
        scored.append((harm, f"{factor} = {value:.3g} (rank {rank:.0%}, ρ {relation['rho']:+.2f})"))
    return [text for harm, text in sorted(scored, reverse=True)[:count] if harm > 0.05]


def ablation_overrides(record: dict) -> dict[str, dict]:
    """Per factor group, the set's drawn factors with that group set back to nominal."""
    nominal = Variation.nominal().to_dict()
    drawn = dict(record["variation"])
    plans = {}
    for group, prefixes in GROUPS.items():
        reset = {name: nominal[name] for name in drawn if name.startswith(prefixes)}
        plans[group] = {**drawn, **reset}
    return plans


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def report(records: list[dict], ablations: list[dict], arms: list[str], output: Path, seconds: float) -> str:
    """Markdown report; also writes ``robustness.json``."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    lines = [f"# Robustness on drawn sets (commit {commit or 'unknown'})", "",
             f"{len(records)} sets; wall time of this report's runs {seconds / 60:.1f} min. Targets (issue 16) in brackets.", ""]
    summary: dict = {}
    relations_by_metric = {metric: factor_relations(records, metric) for metric in METRICS if len(records) >= 4}
    for arm in arms:
        mine = [record for record in records if record["arm"] == arm]
        if not mine:
            continue
        timing = {key: distribution(np.array([record[key] for record in mine]), "low")
                  for key in ("simulate_seconds", "recipe_seconds")}
        simulate, recipe = timing["simulate_seconds"], timing["recipe_seconds"]
        lines += [f"## {arm} ({len(mine)} sets, seeds {min(r['seed'] for r in mine)}–{max(r['seed'] for r in mine)})", "",
                  f"Simulate {simulate['median']:.1f} s median (max {simulate['worst']:.1f} s); "
                  f"recipe {recipe['median']:.1f} s median (max {recipe['worst']:.1f} s); "
                  f"recipe failures {sum(r['recipe_exit'] != 0 for r in mine)}.", "",
                  "| metric | median | p95 | worst | target | sets failing |", "|---|---|---|---|---|---|"]
        summary[arm] = {"timing": timing, "metrics": {}}
        for metric, (_, better, target) in METRICS.items():
            spread = distribution(np.array([record["metrics"][metric] for record in mine]), better)
            failing = sum(metric in record["failed"] for record in mine)
            summary[arm]["metrics"][metric] = {**spread, "failing": failing}
            limit = "—" if target is None else ("≤ " if better == "low" else "≥ ") + f"{target:g}"
            lines.append(f"| {metric} | {_number(spread['median'])} | {_number(spread['p95'])} | {_number(spread['worst'])} | "
                         f"{limit} | {failing if target is not None else '—'} |")
        passing = sum(not record["failed"] for record in mine)
        lines += ["", f"Sets meeting every target: {passing} of {len(mine)}.", ""]
        failing_sets = sorted((r for r in mine if r["failed"]), key=lambda r: -len(r["failed"]))
        if failing_sets:
            lines += ["| seed | failed targets (value) | suspected factors (first failed target) |", "|---|---|---|"]
        for record in failing_sets:
            failed = ", ".join(f"{name} ({_number(record['metrics'][name])})" for name in record["failed"])
            first = record["failed"][0]
            if record["recipe_exit"] == 0:
                named = suspects(record, first, relations_by_metric.get(first, []), records)
            else:
                named = ["recipe failed: " + (record["recipe_error"].strip().splitlines() or [""])[-1][:150]]
            lines.append(f"| {record['seed']} | {failed} | {'; '.join(named) or '—'} |")
        lines.append("")
    if ablations:
        lines += ["## Ablation: failing sets re-run with one factor group set back to nominal", "",
                  "Per failed target: its drawn value, then each group whose reset alone makes it pass (with the value "
                  "then), or the best value any single reset reached.", "",
                  "| arm | seed | target: drawn value → fixed by resetting |", "|---|---|---|"]
        for item in ablations:
            parts = []
            for metric in item["failed"]:
                with_reset = {group: values[metric] for group, values in item["values_with_group_reset"].items()}
                if item["fixed_by"][metric]:
                    effect = ", ".join(f"{group} ({_number(with_reset[group])})" for group in item["fixed_by"][metric])
                else:
                    better = METRICS[metric][1]
                    finite = {group: value for group, value in with_reset.items() if np.isfinite(value)}
                    pick = min if better == "low" else max
                    best = pick(finite, key=lambda group: finite[group]) if finite else None
                    effect = "no single group" + (f" (best: {best} {_number(finite[best])})" if best else "")
                parts.append(f"{metric} {_number(item['drawn'][metric])} → {effect}")
            lines.append(f"| {item['arm']} | {item['seed']} | {'; '.join(parts)} |")
        lines.append("")
    lines += ["## Factors most related to each metric (all arms pooled)", "",
              "Spearman ρ between the factor and the metric ranked within its arm; then the metric's median in the low / "
              "middle / high third of the factor's values (per value for factors with at most four values). With n sets, "
              f"|ρ| below about {2 / max(math.sqrt(len(records) - 1), 1):.2f} is within chance.", ""]
    for metric, relations in relations_by_metric.items():
        top = "; ".join(f"{item['factor']} ρ {item['rho']:+.2f} ({' / '.join(_number(m) for m in item['group_medians'])})"
                        for item in relations[:4])
        lines.append(f"* **{metric}**: {top or 'no factor varies with it'}")
    text = "\n".join(lines) + "\n"
    output.mkdir(parents=True, exist_ok=True)
    (output / "robustness.md").write_text(text)
    (output / "robustness.json").write_text(json.dumps({"summary": summary, "factors": relations_by_metric,
                                                        "ablations": ablations, "sets": records}, indent=1, default=float))
    return text


def ablate(records: list[dict], output: Path, *, per_arm: int, workers: int, keep: bool) -> list[dict]:
    """Re-run the ``per_arm`` sets of each arm that miss the most targets (a missing order aside: its cause is
    known) with each factor group at nominal, and record which groups make each failed target pass."""
    chosen = []
    for arm in sorted({record["arm"] for record in records}):
        failing = [record for record in records if record["arm"] == arm and record["failed"] and record["recipe_exit"] == 0
                   and "orders_missing" not in record["failed"]]
        chosen += sorted(failing, key=lambda record: (-len(record["failed"]), record["seed"]))[:per_arm]
    jobs = [(record["arm"], record["seed"], plan, f"_no_{group.replace(' ', '_')}")
            for record in chosen for group, plan in ablation_overrides(record).items()]
    run_all(jobs, output, workers=workers, keep=keep)
    results = []
    for record in chosen:
        fixed: dict[str, list[str]] = {metric: [] for metric in record["failed"]}
        values: dict[str, dict[str, float]] = {}
        for group in GROUPS:
            label = f"_no_{group.replace(' ', '_')}"
            rerun = json.loads(_record_path(output, record["arm"], record["seed"], label).read_text())
            values[group] = {metric: rerun["metrics"][metric] for metric in record["failed"]}
            for metric in record["failed"]:
                if metric not in rerun["failed"]:
                    fixed[metric].append(group)
        results.append({"arm": record["arm"], "seed": record["seed"], "failed": record["failed"],
                        "drawn": {metric: record["metrics"][metric] for metric in record["failed"]},
                        "values_with_group_reset": values, "fixed_by": fixed})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=DEFAULT_ARMS, help="instrument:arm:binning list")
    parser.add_argument("--sets", type=int, default=50, help="drawn sets per arm")
    parser.add_argument("--first-seed", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "robustness")
    parser.add_argument("--jobs", type=int, default=1, help="sets run at once (each recipe uses 2 threads)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="fix a factor in every drawn set (YAML value), e.g. --set nflats=3")
    parser.add_argument("--min-flats", type=int, default=5,
                        help="raise a drawn number of flats below this to it (the recipe, like the data organiser, "
                             "refuses fewer than 5; 3 measures that)")
    parser.add_argument("--ablate", type=int, default=0, help="failing sets per arm to re-run with each factor group at nominal")
    parser.add_argument("--keep", action="store_true", help="keep each set's frames and products")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the scored sets")
    args = parser.parse_args(argv)
    import yaml

    overrides = {name: yaml.safe_load(value) for name, value in (item.split("=", 1) for item in args.set)}
    Variation().with_values(overrides)
    arms = args.arms.split(",")
    started = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.sets)
    jobs = [(arm, seed, with_min_flats(arm, seed, overrides, args.min_flats), "") for seed in seeds for arm in arms]
    if not args.report_only:
        run_all(jobs, args.output, workers=args.jobs, keep=args.keep)
    records = [json.loads(_record_path(args.output, arm, seed).read_text()) for arm, seed, _, _ in jobs
               if _record_path(args.output, arm, seed).exists()]
    ablations = ablate(records, args.output, per_arm=args.ablate, workers=args.jobs, keep=args.keep) if args.ablate else []
    print(report(records, ablations, arms, args.output, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
