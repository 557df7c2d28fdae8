"""bench/compare.py's arithmetic: merging runs, the verdict, the table (no bench run here; the
script itself was checked with ``python -m bench.compare main HEAD --smoke``)."""

from __future__ import annotations

from typing import Any

from bench import compare


def _fig(median: float, lo: float, hi: float) -> dict[str, Any]:
    return {"status": "ok", "median": median, "min": lo, "max": hi}


def test_runs_merge_into_median_of_medians_and_the_whole_spread() -> None:
    docs = [
        {"figures": {"a": _fig(10, 9, 11), "s": {"status": "skipped"}}},
        {"figures": {"a": _fig(14, 12, 20)}},
        {"figures": {"a": _fig(12, 5, 13)}},
    ]
    merged = compare.merge_runs(docs)
    assert merged["a"] == {"status": "ok", "median": 12, "min": 5, "max": 20, "n": 3}
    assert merged["s"] == {"status": "skipped", "n": 0}


def test_the_verdict_needs_spreads_that_do_not_overlap() -> None:
    before = _fig(10, 9, 11)
    assert compare.verdict(before, _fig(10.5, 9.5, 12), lower_better=True) == ""
    assert compare.verdict(before, _fig(13, 12, 14), lower_better=True) == "worse"
    assert compare.verdict(before, _fig(13, 12, 14), lower_better=False) == "better"
    assert compare.verdict(before, _fig(11.5, 10, 14), lower_better=True) == "worse?"
    assert compare.verdict(before, _fig(8.5, 7, 10), lower_better=True) == "better?"
    assert compare.verdict(before, _fig(12, 12, 12), lower_better=True) == "worse (no spread)"
    assert compare.verdict(before, {"status": "error"}, lower_better=True) == "ok/error"


def test_latencies_memory_cpu_and_flatness_are_lower_is_better_rates_are_not() -> None:
    assert compare.lower_is_better("catchup.genjobs.ms", "ms")
    assert compare.lower_is_better("memory.job_kb", "KB")
    assert compare.lower_is_better("readers.idle_cpu_pct", "% of a core")
    assert compare.lower_is_better("resume.genjobs.flatness", "x")
    assert not compare.lower_is_better("ingest.ratio.vs_nats", "x")
    assert not compare.lower_is_better("ingest.flat.genjobs.rate", "tokens/s")


def test_the_table_lists_every_figure_and_names_the_worse_ones() -> None:
    rows = compare.compare(
        {"x.ms": _fig(10, 9, 11), "y.rate": _fig(100, 90, 110)},
        {"x.ms": _fig(20, 19, 21), "y.rate": _fig(101, 95, 105), "z": _fig(1, 1, 2)},
        {"x.ms": "ms", "y.rate": "msgs/s"},
    )
    assert [(r["key"], r["verdict"]) for r in rows] == [
        ("x.ms", "worse"),
        ("y.rate", ""),
        ("z", "missing/ok"),
    ]
    assert rows[0]["change_pct"] == 100.0
    md = compare.markdown(rows, "main", "HEAD", 2)
    assert "| x.ms | ms | 10 (9..11) | 20 (19..21) | +100.0 % | worse |" in md
    assert "worse beyond the spread: x.ms" in md
