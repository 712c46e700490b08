"""soxspipe 0.19.0's own ``mflat`` accepts every simulated set (``make interop`` or ``pytest -m interop``).

Each set is simulated into a temporary folder and reduced there by soxspipe in a subprocess, with a
settings file made of soxspipe's own package defaults for the instrument (soxspipe needs its full
file: the logging set-up and the other recipes' blocks) and this project's ``soxs-mflat`` and
``background-subtraction`` blocks. The file is written as ``soxspipe.yaml`` in the working folder,
which also stops soxspipe from exiting 1 after a successful run (spec §9 item 20). The scores of
soxspipe's products against the truth are printed for comparison; they are not asserted.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from soxs_mflat.simulate import SimulatedSet, format_score, score, simulate_set
from soxs_mflat.simulate.score import find_products

ROOT = Path(__file__).resolve().parents[1]
SOXSPIPE = ROOT / ".venv-soxspipe" / "bin" / "soxspipe"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not SOXSPIPE.exists(),
        reason=f"soxspipe 0.19.0 is not installed at {SOXSPIPE} (`make interop` installs it)",
    ),
]

CASES = [
    ("soxs", "NIR", (1, 1)),
    ("soxs", "VIS", (1, 1)),
    ("xsh", "NIR", (1, 1)),
    ("xsh", "VIS", (1, 1)),
    ("xsh", "UVB", (1, 1)),
    ("xsh", "VIS", (2, 2)),
]


def _write_soxspipe_settings(simulated: SimulatedSet) -> Path:
    """Replace the set's settings by soxspipe's package defaults carrying our mflat blocks."""
    package = next(ROOT.glob(".venv-soxspipe/lib/python*/site-packages/soxspipe"))
    settings = yaml.safe_load((package / f"{simulated.instrument}_default_settings.yaml").read_text())
    ours = yaml.safe_load(simulated.settings.read_text())
    for block in ("soxs-mflat", "background-subtraction"):
        settings[block] = ours[block]
    settings["logging settings"]["handlers"]["file"]["filename"] = str(simulated.sof.parent / "soxspipe.log")
    path = simulated.sof.parent / "soxspipe.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@pytest.mark.parametrize(("instrument", "arm", "binning"), CASES, ids=[f"{i}-{a}-{b[0]}x{b[1]}" for i, a, b in CASES])
def test_soxspipe_mflat_accepts_the_set(tmp_path: Path, instrument: str, arm: str, binning: tuple[int, int]) -> None:
    simulated = simulate_set(tmp_path / "set", instrument=instrument, arm=arm, binning=binning, nflats=5, seed=1)
    settings = _write_soxspipe_settings(simulated)
    products = tmp_path / "products"
    started = time.perf_counter()
    run = subprocess.run(
        [str(SOXSPIPE), "mflat", simulated.sof.name, "-o", str(products), "-s", settings.name],
        cwd=simulated.sof.parent,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    elapsed = time.perf_counter() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    flat, table = find_products(products)
    assert flat is not None, f"soxspipe wrote no MASTER_FLAT product:\n{run.stdout[-3000:]}"
    assert table is not None, "soxspipe wrote no order-location table with edges"
    print(f"\nsoxspipe mflat ran in {elapsed:.0f} s")
    print(format_score(score(products, simulated.truth_dir)))
