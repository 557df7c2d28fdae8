"""``just bench-compare BEFORE AFTER``: ``just bench`` on two git revisions, back to back.

    python -m bench.compare main adapter                # full bench of each, then a table
    python -m bench.compare f551372 HEAD --rounds 2     # before, after, before, after
    python -m bench.compare main HEAD --smoke --out /tmp/cmp

Each revision is checked out in a temporary git worktree (detached, removed afterwards) and
its own ``python -m bench.run`` runs there, with this interpreter and ``PYTHONPATH`` set to
that worktree, so each side measures its own code with the same dependencies. The runs
alternate (before, after, before, after, ...) so that a machine getting slower or faster
during the comparison shows up in both. Run it on an idle machine: other work on the two
cores moves the figures more than most changes do.

Writes ``<out>/<label>-<round>/latest.json`` for every run, and ``<out>/compare.md`` and
``<out>/compare.json``: per figure the median of each side (over rounds: the median of the
runs' medians) and its spread (min..max over every run), the change, and a verdict. A figure
is ``worse`` when the two spreads do not overlap and the after side is on the bad side (lower
for a rate, higher for a latency, memory or CPU figure); ``worse?`` when only the after median
is beyond the before spread; ``worse (no spread)`` when a side has a single value (a figure
measured once per run: use ``--rounds 2`` or more to give it a spread). Exit status 1 when a
figure is ``worse`` or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOWER_IS_BETTER_UNITS = ("ms", "KB", "% of a core")
LOWER_IS_BETTER_KEYS = ("resume.genjobs.flatness",)  # p50 at 10,000 / p50 at 100 events


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def lower_is_better(key: str, unit: str) -> bool:
    return key in LOWER_IS_BETTER_KEYS or unit in LOWER_IS_BETTER_UNITS


def merge_runs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One side's figures over its runs: median of the medians, min and max over all."""
    out: dict[str, dict[str, Any]] = {}
    keys = {k for doc in docs for k in doc.get("figures", {})}
    for key in sorted(keys):
        rows = [doc["figures"][key] for doc in docs if key in doc.get("figures", {})]
        ok = [r for r in rows if r.get("status") == "ok" and r.get("median") is not None]
        if not ok:
            out[key] = {"status": rows[0].get("status", "missing"), "n": 0}
            continue
        out[key] = {
            "status": "ok",
            "median": statistics.median(r["median"] for r in ok),
            "min": min(r.get("min", r["median"]) for r in ok),
            "max": max(r.get("max", r["median"]) for r in ok),
            "n": len(ok),
        }
    return out


def verdict(before: dict[str, Any], after: dict[str, Any], lower_better: bool) -> str:
    """``worse``/``better`` when the spreads do not overlap; ``worse?``/``better?`` when only
    the after median is beyond the before spread; "" within the spread."""
    if before.get("status") != "ok" or after.get("status") != "ok":
        return f"{before.get('status')}/{after.get('status')}"
    if before["min"] == before["max"] or after["min"] == after["max"]:
        # One value on a side (a figure measured once per run, one round): no spread to
        # judge against. Say which way it moved; more --rounds give it a spread.
        moved = after["median"] - before["median"]
        if moved == 0:
            return ""
        good = (moved < 0) == lower_better
        return "better (no spread)" if good else "worse (no spread)"
    sign = -1.0 if lower_better else 1.0  # higher score is better
    b_lo, b_hi = sorted((sign * before["min"], sign * before["max"]))
    a_lo, a_hi = sorted((sign * after["min"], sign * after["max"]))
    a_med = sign * after["median"]
    if a_hi < b_lo:
        return "worse"
    if a_lo > b_hi:
        return "better"
    if a_med < b_lo:
        return "worse?"
    if a_med > b_hi:
        return "better?"
    return ""


def compare(
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    units: dict[str, str],
) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key, {"status": "missing"}), after.get(key, {"status": "missing"})
        unit = units.get(key, "")
        row: dict[str, Any] = {"key": key, "unit": unit, "before": b, "after": a}
        if b.get("status") == "ok" and a.get("status") == "ok" and b["median"]:
            row["change_pct"] = 100.0 * (a["median"] - b["median"]) / abs(b["median"])
        row["verdict"] = verdict(b, a, lower_is_better(key, unit))
        rows.append(row)
    return rows


def _fmt(fig: dict[str, Any]) -> str:
    if fig.get("status") != "ok":
        return str(fig.get("status"))
    return f"{fig['median']:,.4g} ({fig['min']:,.4g}..{fig['max']:,.4g})"


def markdown(rows: list[dict[str, Any]], before: str, after: str, rounds: int) -> str:
    lines = [
        f"# bench before/after: {before} -> {after} ({rounds} round(s), runs alternated)",
        "",
        "median (min..max over every run); `worse`: spreads do not overlap.",
        "",
        f"| figure | unit | before {before} | after {after} | change | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = f"{r['change_pct']:+.1f} %" if "change_pct" in r else ""
        lines.append(
            f"| {r['key']} | {r['unit']} | {_fmt(r['before'])} | {_fmt(r['after'])} "
            f"| {change} | {r['verdict']} |"
        )
    worse = [r["key"] for r in rows if r["verdict"] == "worse"]
    lines += ["", f"worse beyond the spread: {', '.join(worse) if worse else 'none'}", ""]
    return "\n".join(lines)


def _run(tree: Path, out: Path, bench_args: list[str]) -> dict[str, Any] | None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "bench.run", "--out", str(out), *bench_args]
    print(f"$ (cd {tree} && {' '.join(cmd)})", flush=True)
    rc = subprocess.run(cmd, cwd=tree, env=env).returncode
    latest = out / "latest.json"
    if not latest.exists():
        print(f"bench in {tree} produced no {latest} (exit {rc})", flush=True)
        return None
    doc: dict[str, Any] = json.loads(latest.read_text())
    doc["exit_status"] = rc
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    ap.add_argument("before", help="git revision measured first (e.g. main, a commit)")
    ap.add_argument("after", help="git revision measured second (e.g. a branch, HEAD)")
    ap.add_argument("--rounds", type=int, default=1, help="before/after pairs (default 1)")
    ap.add_argument("--out", type=Path, help="results dir (default: a new temporary one)")
    ap.add_argument("--smoke", action="store_true", help="bench.run --smoke (checks the script)")
    ap.add_argument("--only", help="bench.run --only (comma-separated sections)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="genjobs-bench-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    bench_args = (["--smoke"] if args.smoke else []) + (["--only", args.only] if args.only else [])
    sides = {"before": args.before, "after": args.after}
    commits = {label: _git("rev-parse", "--short", rev) for label, rev in sides.items()}
    docs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    failed = False
    with tempfile.TemporaryDirectory(prefix="genjobs-compare-trees-") as tmp:
        trees = {}
        try:
            for label in sides:
                tree = Path(tmp) / label
                _git("worktree", "add", "--detach", str(tree), commits[label])
                trees[label] = tree
            for n in range(1, args.rounds + 1):
                for label in sides:
                    doc = _run(trees[label], out / f"{label}-{n}", bench_args)
                    if doc is None or doc["exit_status"] != 0:
                        failed = True
                    if doc is not None:
                        docs[label].append(doc)
        finally:
            for tree in trees.values():
                _git("worktree", "remove", "--force", str(tree))
    units = _units()
    rows = compare(merge_runs(docs["before"]), merge_runs(docs["after"]), units)
    names = (f"{args.before} ({commits['before']})", f"{args.after} ({commits['after']})")
    md = markdown(rows, *names, args.rounds)
    (out / "compare.md").write_text(md)
    (out / "compare.json").write_text(
        json.dumps({"before": names[0], "after": names[1], "rows": rows}, indent=1)
    )
    print(md)
    print(f"written: {out / 'compare.md'}, {out / 'compare.json'}")
    return 1 if failed or any(r["verdict"] == "worse" for r in rows) else 0


def _units() -> dict[str, str]:
    from bench.figures import SPECS

    return {key: spec.unit for key, spec in SPECS.items()}


if __name__ == "__main__":
    raise SystemExit(main())
