"""Score a master-flat recipe's products against the ground truth of a simulated set.

The products folder is searched recursively. The master flat is the FITS file whose primary header
has ``ESO PRO CATG`` starting with ``MASTER_FLAT_`` *and* which has ``QUAL``/``ERRS`` extensions
(soxspipe's background image carries the same category but has a single HDU). The order table is
the ``ORDER_TAB_`` file with edge coefficients. For both, the untagged (stitched) file is preferred
over ``…_DLAMP``/``…_QLAMP`` ones.

All metrics are in frame pixels (the set's binning) or in relative flat-field units. For X-shooter
UVB, whose master flat is stitched from two lamps, each order is scored against the lamp it was
taken from (the one its shape matches) and one global scale is fitted per lamp, because the lamps'
relative level and the order where a recipe switches lamp are conventions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from soxs_mflat.order_table import OrderTable
from soxs_mflat.simulate.tables import read_order_table
from soxs_mflat.simulate.truth import NOISE, SCATTER, SIGNAL, Truth

INSET = 2.0
"""Flat-field pixels are scored only this many pixels (or more) inside the true edges."""
MAD_TO_SIGMA = 1.4826
DEFECT_KINDS_MASKED = ("dead", "hot", "low_sensitivity")
"""Defect kinds a flat should mask (dust must be kept, not masked)."""
DETECTABLE_SIGMA = 8.0
"""A hot pixel is detectable when its excess is this many σ in the detrending frames: a detector whose
threshold keeps false alarms to ~0.1 per frame (~5.5σ for 4 Mpx) then finds it with 99 % probability."""
LOW_SENSITIVITY_LIMIT = 0.9
"""Recall of low-sensitivity pixels (and traps) counts those at least 10 % below their neighbours."""


def score(
    products_dir: Path,
    truth_dir: Path,
    *,
    include_scattered_light: bool = False,
    seed: int = 0,
) -> dict:
    """Compare the master flat and order table in ``products_dir`` with the truth in ``truth_dir``.

    Parameters
    ----------
    products_dir
        Folder holding (anywhere below it) the recipe's ``MASTER_FLAT_<ARM>`` and ``ORDER_TAB_<ARM>``.
    truth_dir
        The ``truth/`` folder of a simulated set.
    include_scattered_light
        Score the flat against truth signal + scattered light, for a flat that did not subtract the
        inter-order background.
    seed
        Seed of the Gaussian realisation that gives the photon-noise expectation.

    Returns
    -------
    dict
        JSON-serialisable metrics; see ``docs/simulator.md``.
    """
    truth = Truth.read(truth_dir)
    flat_path, table_path = find_products(Path(products_dir))
    result: dict = {
        "instrument": truth.meta["instrument"],
        "arm": truth.meta["arm"],
        "binning": truth.meta["binning"],
        "master_flat_file": str(flat_path) if flat_path else None,
        "order_table_file": str(table_path) if table_path else None,
        "include_scattered_light": include_scattered_light,
    }
    table = None
    if table_path is not None:
        table = read_order_table(table_path)
    result.update(_score_edges(truth, table))
    if flat_path is not None:
        result.update(_score_flat(truth, flat_path, include_scattered_light=include_scattered_light, seed=seed))
    return result


def find_products(products_dir: Path) -> tuple[Path | None, Path | None]:
    """The master flat and the order table (with edges) found below ``products_dir``."""
    flats, tables = [], []
    for path in sorted(products_dir.rglob("*.fits")):
        try:
            with fits.open(path) as hdul:
                catg = str(hdul[0].header.get("ESO PRO CATG", ""))
                names = {hdu.name for hdu in hdul}
                if catg.startswith("MASTER_FLAT_") and {"QUAL", "ERRS"} <= names:
                    flats.append(path)
                elif catg.startswith("ORDER_TAB_") and len(hdul) > 1 and _has_edges(hdul[1]):
                    tables.append(path)
        except OSError:
            continue
    def preferred(paths: list[Path]) -> Path | None:
        untagged = [path for path in paths if not path.stem.upper().endswith(("_DLAMP", "_QLAMP"))]
        return (untagged or paths or [None])[-1]

    return preferred(flats), preferred(tables)


def _has_edges(hdu: fits.hdu.base.ExtensionHDU) -> bool:
    columns = getattr(hdu, "columns", None)
    return columns is not None and any(name.startswith("edgeup_c") for name in columns.names)


def _summary(errors: np.ndarray) -> dict:
    if errors.size == 0:
        return {"median": None, "p95": None, "max": None, "n": 0}
    return {
        "median": float(np.median(errors)),
        "p95": float(np.percentile(errors, 95)),
        "max": float(np.max(errors)),
        "n": int(errors.size),
    }


def _score_edges(truth: Truth, table: OrderTable | None) -> dict:
    """Edge errors of the product table over every true order's true extent along B."""
    edges = truth.edges()
    true_orders = [int(order) for order in truth.meta["orders"]]
    product_orders = [] if table is None or not table.has_edges else [int(order) for order in table.orders]
    found = sorted(set(true_orders) & set(product_orders))
    a_bin, b_bin = truth.binning
    errors: dict[str, list[np.ndarray]] = {"edge_low": [], "edge_up": []}
    per_order = {}
    order_column = np.asarray(edges["order"])
    for order in found:
        rows = order_column == order
        b = np.asarray(edges["b"][rows], dtype=np.float64)
        order_errors = []
        for name in errors:
            product = getattr(table, name).in_frame(order, b, a_bin, b_bin)
            error = np.abs(product - np.asarray(edges[name][rows]))
            errors[name].append(error)
            order_errors.append(error)
        per_order[str(order)] = float(np.max(np.concatenate(order_errors)))
    joined = {name: np.concatenate(values) if values else np.zeros(0) for name, values in errors.items()}
    return {
        "orders_true": true_orders,
        "orders_found": found,
        "orders_missing": sorted(set(true_orders) - set(product_orders)),
        "orders_spurious": sorted(set(product_orders) - set(true_orders)),
        "edge_low": _summary(joined["edge_low"]),
        "edge_up": _summary(joined["edge_up"]),
        "all": _summary(np.concatenate([joined["edge_low"], joined["edge_up"]])),
        "edge_max_by_order": per_order,
    }


def _order_map(truth: Truth, *, inset: float) -> np.ndarray:
    """Prepared-frame map of the order number of pixels ``inset`` px or more inside the true edges."""
    rows, cols = truth.meta["frame_shape"]
    along_x = truth.dispersion_axis == "x"
    n_b, n_a = (rows, cols) if along_x else (cols, rows)
    order_map = np.zeros((n_b, n_a), dtype=np.int16)
    edges = truth.edges()
    a = np.arange(n_a)[None, :]
    order_column = np.asarray(edges["order"])
    for order in np.unique(order_column):
        select = order_column == order
        b = np.asarray(edges["b"][select], dtype=np.int64)
        low = np.asarray(edges["edge_low"][select])[:, None]
        up = np.asarray(edges["edge_up"][select])[:, None]
        inside = (a >= low + inset) & (a <= up - inset)
        block = order_map[b]
        block[inside] = order
        order_map[b] = block
    return order_map if along_x else np.ascontiguousarray(order_map.T)


def _robust_sigma(values: np.ndarray) -> float | None:
    if values.size == 0:
        return None
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def _score_flat(truth: Truth, flat_path: Path, *, include_scattered_light: bool, seed: int) -> dict:
    """Flat-field accuracy, noise expectation, ERRS calibration and bad-pixel-mask quality."""
    with fits.open(flat_path) as hdul:
        flux = np.asarray(hdul[0].data, dtype=np.float64)
        qual = np.asarray(hdul["QUAL"].data) != 0
        errs = np.asarray(hdul["ERRS"].data, dtype=np.float64)
    expected_shape = tuple(truth.meta["frame_shape"])
    if flux.shape != expected_shape:
        return {"flat_error": None, "flat_problem": f"master flat shape {flux.shape} is not {expected_shape}"}
    defects = truth.defects()
    order_map = _order_map(truth, inset=INSET)
    in_order = order_map > 0
    defective = _defective(truth, defects)
    candidates = in_order & ~defective & ~qual & np.isfinite(flux)
    signal, noise, groups, lamp_by_order = _reference(truth, flux, candidates, order_map, include_scattered_light)
    usable = candidates & np.isfinite(noise) & (signal > 0)

    scale = np.ones_like(signal)
    for orders in groups.values():
        group = usable & np.isin(order_map, orders)
        if group.any():
            scale[np.isin(order_map, orders)] = np.median(flux[group] / signal[group])
    model = scale * signal
    ratio = flux[usable] / model[usable] - 1.0
    flat_error = _robust_sigma(ratio)
    realisation = noise[usable] * np.random.default_rng(seed).standard_normal(int(usable.sum()))
    expected = _robust_sigma(realisation)

    bias = {}
    order_values = order_map[usable]
    for order in truth.meta["orders"]:
        values = ratio[order_values == order]
        if values.size:
            bias[str(order)] = float(np.median(values))
    with np.errstate(divide="ignore", invalid="ignore"):
        pulls = (flux[usable] - model[usable]) / errs[usable]
    pulls = pulls[np.isfinite(pulls)]
    result = {
        "flat_pixels_scored": int(usable.sum()),
        "flat_scale": {name: float(np.median(scale[usable & np.isin(order_map, orders)])) for name, orders in groups.items()},
        "flat_lamp_by_order": lamp_by_order,
        "flat_error": flat_error,
        "flat_noise_expected": expected,
        "flat_error_ratio": (flat_error / expected) if flat_error is not None and expected else None,
        "flat_bias_by_order": bias,
        "flat_bias_max_abs": max((abs(value) for value in bias.values()), default=None),
        "errs_calibration": _robust_sigma(pulls),
        "outlier_fraction_5sigma": float(np.mean(np.abs(ratio) > 5.0 * noise[usable])) if ratio.size else None,
    }
    result.update(_score_mask(qual, in_order, defects, truth=truth))
    background_path = _background_product(flat_path)
    if background_path is not None:
        scatter = _scatter_reference(truth, order_map, lamp_by_order)
        result.update(_score_background(background_path, scale * scatter, noise * model, usable))
    return result


def _background_product(flat_path: Path) -> Path | None:
    """The ``<stem>_BKGROUND.fits`` written next to a master flat, if any."""
    candidate = flat_path.with_name(f"{flat_path.stem}_BKGROUND.fits")
    return candidate if candidate.exists() else None


def _scatter_reference(truth: Truth, order_map: np.ndarray, lamp_by_order: dict[str, str]) -> np.ndarray:
    """True scattered light under each order (of the lamp each order was scored against)."""
    planes = truth.lamp_planes()
    if not planes:
        return truth.image(SCATTER)
    scatter = np.zeros(order_map.shape)
    for order, lamp in lamp_by_order.items():
        pixels = order_map == int(order)
        scatter[pixels] = planes[lamp]["scatter"][pixels]
    return scatter


def _score_background(path: Path, expected: np.ndarray, noise: np.ndarray, usable: np.ndarray) -> dict:
    """How well the subtracted background matches the true scattered light inside the orders.

    ``expected`` is the truth in the product's units; a pixel is within tolerance when the model is
    within 10 % of the true scattered light or within the flat's own 1σ noise there.
    """
    with fits.open(path) as hdul:
        model = np.asarray(hdul[0].data, dtype=np.float64)
    if model.shape != expected.shape:
        return {"background_problem": f"background shape {model.shape} is not {expected.shape}"}
    residual = np.abs(model[usable] - expected[usable])
    tolerance = np.fmax(0.1 * expected[usable], noise[usable])
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = residual / expected[usable]
    return {
        "background_residual_median_rel": float(np.nanmedian(relative)),
        "background_residual_p99_rel": float(np.nanpercentile(relative, 99)),
        "background_fraction_outside_tolerance": float(np.mean(residual > tolerance)),
    }


def _reference(
    truth: Truth, flux: np.ndarray, candidates: np.ndarray, order_map: np.ndarray, include_scattered_light: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]], dict[str, str]]:
    """Truth signal and relative noise to score against, lamp groups, and the lamp chosen per order.

    For a two-lamp set each order is compared with the lamp whose shape along and across the order
    the product follows best (smallest robust scatter of the ratio), so the score does not depend on
    where a recipe switches lamp; one scale is then fitted per lamp.
    """
    orders = [int(order) for order in truth.meta["orders"]]
    planes = truth.lamp_planes()
    if not planes:
        signal = truth.image(SIGNAL) + (truth.image(SCATTER) if include_scattered_light else 0.0)
        return signal, truth.image(NOISE), {"all": orders}, {}
    references = {
        lamp: plane["signal"] + (plane["scatter"] if include_scattered_light else 0.0) for lamp, plane in planes.items()
    }
    signal = np.zeros_like(flux)
    noise = np.full_like(flux, np.nan)
    groups: dict[str, list[int]] = {lamp: [] for lamp in planes}
    lamp_by_order = {}
    for order in orders:
        pixels = order_map == order
        sample = candidates & pixels
        spread = {}
        for lamp, reference in references.items():
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = flux[sample] / reference[sample]
            ratio = ratio[np.isfinite(ratio)]
            spread[lamp] = _robust_sigma(ratio / np.median(ratio)) if ratio.size else np.inf
        best = min(spread, key=lambda lamp: spread[lamp])
        lamp_by_order[str(order)] = best
        groups[best].append(order)
        signal[pixels] = references[best][pixels]
        noise[pixels] = planes[best]["noise"][pixels]
    return signal, noise, {lamp: members for lamp, members in groups.items() if members}, lamp_by_order


def _detectable_hot(truth: Truth, hot: np.ndarray) -> np.ndarray:
    """Hot pixels whose excess is at least :data:`DETECTABLE_SIGMA` σ in the set's own detrending frames.

    On NIR that is the mean of the lamp-off frames (excess = rate × exposure), on UVB/VIS the master
    bias (excess = rate × the bias dark time). σ is the truth's per-pixel ``DETECT_SIGMA`` (varied
    sets: read noise, the pixel's charge and, on NIR, thermal light and dark current); nominal sets,
    whose hot pixels are all far above the limit, use read noise and the pixel's charge.
    """
    meta = truth.meta
    rate = truth.hot_rate()
    if meta["arm"] == "NIR":
        lamp = meta["lamps"][0]
        excess, frames = rate * lamp["exptime"], lamp["n_flats"]
    else:
        excess, frames = rate * meta["bias_dark_time"], meta["n_bias"]
    sigma = truth.optional_defect("DETECT_SIGMA")
    if sigma is None:
        sigma = np.sqrt((meta["ron"] ** 2 + excess) / max(frames, 1))
    return hot & (excess >= DETECTABLE_SIGMA * sigma)


def _defective(truth: Truth, defects: dict[str, np.ndarray]) -> np.ndarray:
    """Pixels a flat may flag and whose flat value is not scored: dead, hot, low-sensitivity, and in
    varied sets charge traps with their trails and pixels that are wrong in the master bias."""
    defective = np.zeros_like(defects["dead"])
    for kind in DEFECT_KINDS_MASKED:
        defective |= defects[kind]
    for name in ("TRAP", "BIAS_ONLY"):
        extra = truth.optional_defect(name)
        if extra is not None:
            defective |= extra != 0
    return defective


def _score_mask(qual: np.ndarray, in_order: np.ndarray, defects: dict[str, np.ndarray], *, truth: Truth) -> dict:
    """Precision and recall of the product's bad-pixel mask over the in-order pixels.

    A flag is correct on a defect (:func:`_defective`) and on a pixel that the master bias's own
    QUAL flags (a recipe carries those over by convention). Recall of low-sensitivity pixels and
    traps counts those whose flat value is at least 10 % below their neighbours
    (``DEFECT_FACTOR``; every low-sensitivity pixel of a nominal set is).
    """
    flagged = qual & in_order
    defective = _defective(truth, defects)
    allowed = defective.copy()
    bias_quality = truth.optional_defect("BIAS_QUAL")
    if bias_quality is not None:
        allowed |= bias_quality != 0
    factor = truth.optional_defect("DEFECT_FACTOR")
    clear = np.ones_like(in_order) if factor is None else factor <= LOW_SENSITIVITY_LIMIT
    kinds = {
        "dead": defects["dead"],
        "hot": defects["hot"],
        "low_sensitivity": defects["low_sensitivity"] & clear,
        "hot_detectable": _detectable_hot(truth, defects["hot"]),
    }
    trap = truth.optional_defect("TRAP")
    if trap is not None:
        kinds["trap"] = (trap == 2) & clear
    n_flagged = int(flagged.sum())
    recall = {}
    for kind, truth_kind in kinds.items():
        truth_kind = truth_kind & in_order
        recall[kind] = float((flagged & truth_kind).sum() / truth_kind.sum()) if truth_kind.any() else None
    dust = defects["dust"] & in_order & ~allowed
    return {
        "mask_flagged_in_order": n_flagged,
        "mask_precision": float((flagged & allowed).sum() / n_flagged) if n_flagged else None,
        "mask_recall": recall,
        "dust_masked_fraction": float((flagged & dust).sum() / dust.sum()) if dust.any() else None,
    }


def format_score(result: dict) -> str:
    """Human-readable summary of a :func:`score` result."""

    def number(value: object, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    lines = [
        f"{result['instrument']} {result['arm']} {result['binning'][0]}x{result['binning'][1]}",
        f"  master flat : {result.get('master_flat_file')}",
        f"  order table : {result.get('order_table_file')}",
        f"  orders      : {len(result['orders_found'])} of {len(result['orders_true'])} found"
        f"; missing {result['orders_missing'] or 'none'}; spurious {result['orders_spurious'] or 'none'}",
    ]
    for name in ("edge_low", "edge_up", "all"):
        summary = result[name]
        lines.append(
            f"  {name:<11} |error| px: median {number(summary['median'])}  p95 {number(summary['p95'])}"
            f"  max {number(summary['max'])}"
        )
    if result.get("flat_error") is not None:
        lines += [
            f"  flat error  : {number(result['flat_error'])} rms (expected from photon noise "
            f"{number(result['flat_noise_expected'])}; ratio {number(result['flat_error_ratio'], 3)})",
            f"  flat bias   : max |per-order median| {number(result['flat_bias_max_abs'])}",
            f"  ERRS        : robust std of pulls {number(result['errs_calibration'], 3)}"
            f"; >5σ outliers {number(result['outlier_fraction_5sigma'], 3)}",
            f"  mask        : precision {number(result['mask_precision'], 3)}; recall "
            + ", ".join(f"{kind} {number(value, 3)}" for kind, value in result["mask_recall"].items())
            + f"; dust masked {number(result['dust_masked_fraction'], 3)}",
        ]
    elif result.get("flat_problem"):
        lines.append(f"  flat        : {result['flat_problem']}")
    else:
        lines.append("  flat        : no master flat found")
    return "\n".join(lines)
