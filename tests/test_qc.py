"""QC metrics: inclusive bounds, 'no range', failure text, the QC table and the documentation."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest

from soxs_mflat.qc import COMMENT_LENGTH, FAIL, METRICS, NO_RANGE, PASS, canonical_name, failed, qc_row, qc_table

DOCS = Path(__file__).parents[1] / "docs" / "qc.md"


@pytest.mark.parametrize(("value", "verdict"), [(0.0, PASS), (0.2, PASS), (0.1, PASS), (0.2000001, FAIL),
                                                (-1e-9, FAIL), (math.nan, FAIL)])
def test_bounds_are_inclusive(value: float, verdict: str) -> None:
    assert qc_row("X RES SD", value, limits=(0.0, 0.2)).verdict == verdict


def test_a_metric_without_a_range_is_not_graded() -> None:
    row = qc_row("N DEAD", 12)
    assert row.verdict == NO_RANGE and row.passed and failed([row]) == []


def test_failure_text_names_metric_value_and_range() -> None:
    row = qc_row("X RES SD", 0.0123, limits=(0.0, 0.005))
    assert failed([row, qc_row("N HOT", 1)]) == [row]
    assert row.describe_failure() == "QC X RES SD = 0.0123 pixels is outside its acceptable range [0, 0.005]"


def test_comments_fit_a_header_card_and_every_metric_is_documented() -> None:
    documented = DOCS.read_text()
    for name, definition in METRICS.items():
        assert len(definition.comment) <= COMMENT_LENGTH, name
        assert f"`{name}`" in documented, name
    assert METRICS["INNER ORDER PIX MEAN"].unit == ""  # a normalised flat has no unit


@pytest.mark.parametrize("spelling", ["X RES SD", "x-res-sd", "x_res_sd", " x  res-SD "])
def test_canonical_names(spelling: str) -> None:
    assert canonical_name(spelling) == "X RES SD"
    assert canonical_name("x-res-sdd") is None


def test_qc_table_has_the_spec_columns_and_the_verdicts() -> None:
    rows = [qc_row("X RES SD", 0.01, limits=(0, 0.005)), qc_row("N SLICES", 40, order=12, to_header=False),
            qc_row("ORDEXP90", 40000, limits=(10000, 150000))]
    table = pd.read_csv(io.StringIO(qc_table(rows, obs_date="2025-01-25T02:38:24", reduction_date="2026-12-07T12:00:00")))
    assert list(table.columns[:10]) == ["soxspipe_recipe", "qc_name", "qc_value", "qc_unit", "qc_comment",
                                        "obs_date_utc", "reduction_date_utc", "to_header", "qc_order", "qc_flag"]
    by_name = table.set_index("qc_name")
    assert by_name.loc["X RES SD", "qc_flag"] == FAIL and by_name.loc["ORDEXP90", "qc_flag"] == PASS
    assert by_name.loc["N SLICES", "qc_order"] == 12 and by_name.loc["N SLICES", "qc_flag"] == NO_RANGE
    assert by_name.loc["X RES SD", "qc_value_max"] == 0.005
