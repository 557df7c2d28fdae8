"""The bench's output: a table on stdout, ``latest.json`` (everything) and ``latest.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.figures import CATALOGUE, SPECS


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit.endswith("/s"):
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{value:.1f}"


def _cells(key: str, f: dict[str, Any]) -> tuple[str, str]:
    unit = SPECS[key].unit
    if f["status"] != "ok":
        return f["status"], f.get("reason", "")
    return fmt(f["median"], unit), f"{fmt(f['min'], unit)} - {fmt(f['max'], unit)}"


def _sections() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in CATALOGUE:
        out.setdefault(spec.section, []).append(spec.key)
    return out


def _target_value(t: dict[str, Any]) -> str:
    if t["values"] is None:
        return t.get("reason") or ""
    units = [SPECS[k].unit for k in t["figures"]]
    return ", ".join(f"{fmt(v, u)} {u}" for v, u in zip(t["values"], units, strict=True))


def text(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "",
        f"genjobs bench{' (SMOKE: tiny sizes, figures not meaningful)' if doc['smoke'] else ''}"
        f" - {doc['started']}, {doc['seconds']:.0f} s",
        f"{m['cpu']} x{m['cpus']}, load {m['load_before']} -> {m['load_after']}, "
        f"CPU steal {m['cpu_steal_pct']} %, GC {m.get('gc', 'default')}",
        "",
        f"{'figure':58} {'median':>12} {'spread (min - max)':>24}  unit",
    ]
    figs = doc["figures"]
    for section, keys in _sections().items():
        lines.append(section)
        for key in keys:
            median, spread = _cells(key, figs[key])
            if figs[key]["status"] == "skipped" and "not selected" in spread:
                continue
            unit = SPECS[key].unit if figs[key]["status"] == "ok" else ""
            if figs[key]["status"] != "ok":
                spread = spread[:60]
            label = SPECS[key].label + _size(figs[key])
            lines.append(f"  {label:56} {median:>12} {spread:>24}  {unit}")
    lines += ["", "targets (goals, not assertions)"]
    for t in doc["targets"]:
        lines.append(f"  {t['target']:26} {t['goal']:42} {t['status']:>8}  {_target_value(t)}")
    return "\n".join(lines)


def _gc(mode: str) -> str:
    if mode == "tuned":
        return (
            "tuned (`--gc tuned`: import-time heap frozen, gen0 threshold 7,000), all systems alike"
        )
    return "Python's defaults"


def markdown(doc: dict[str, Any]) -> str:
    m, v = doc["machine"], doc["machine"]["versions"]
    smoke = "\n**SMOKE RUN: tiny sizes; figures are not meaningful.**\n" if doc["smoke"] else ""
    out = [
        "# genjobs benchmark results",
        smoke,
        f"Run {doc['started']}, {doc['seconds']:.0f} s, `just bench`"
        f"{' --smoke' if doc['smoke'] else ''}. How each figure is measured, and what limits"
        " it: [bench/README.md](../README.md).",
        "",
        "## Machine",
        "",
        f"- {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, Linux {m['kernel']},"
        f" Python {m['python']}",
        f"- load average before {m['load_before']}, after {m['load_after']}"
        " (the bench's own processes add about 1 while it runs);"
        f" CPU steal during the run {m['cpu_steal_pct']} %",
        f"- genjobs {v['genjobs']} (git {v['git_commit']}{', dirty tree' if v['git_dirty'] else ''}),"
        f" {v['nats-server']}, nats-py {v['nats-py']}, {v['redis-server']},"
        f" redis-py {v['redis-py']}, msgspec {v['msgspec']}, uvloop {v['uvloop']}",
        f"- Redis baseline: {'skipped: ' + doc['redis']['skipped'] if doc['redis']['skipped'] else 'ran'}",
        _durable_line(doc),
        f"- garbage collector in every worker: {_gc(m.get('gc', 'default'))}",
        "",
        "| section | seconds | load before | load after |",
        "|---|---:|---|---|",
    ]
    for name, s in doc["sections"].items():
        out.append(f"| {name} | {s['seconds']} | {s['load_before']} | {s['load_after']} |")
    out += [
        "",
        "## Targets",
        "",
        "Goals, not test assertions. Each is checked on the median of its figure.",
        "",
        "| target | goal | measured | status |",
        "|---|---|---|---|",
    ]
    for t in doc["targets"]:
        out.append(f"| {t['target']} | {t['goal']} | {_target_value(t)} | **{t['status']}** |")
    out += ["", "## Figures", "", "Median, and spread as min - max over runs or blocks."]
    figs = doc["figures"]
    for section, keys in _sections().items():
        out += ["", f"### {section}", "", "| figure | median | spread | unit | measured over |"]
        out.append("|---|---:|---|---|---|")
        for key in keys:
            f = figs[key]
            median, spread = _cells(key, f)
            unit = SPECS[key].unit
            how = _how(f)
            label = SPECS[key].label + _size(f)
            out.append(f"| {label} | {median} | {spread} | {unit} | {how} |")
    out.append("")
    return "\n".join(out)


def _durable_line(doc: dict[str, Any]) -> str:
    ref = doc.get("durable_ref") or {}
    if ref.get("skipped"):
        return f"- Durable Streams reference (SSE section): skipped: {ref['skipped']}"
    return (
        f"- Durable Streams reference (SSE section): @durable-streams/server {ref.get('package')}"
        f" on Node {ref.get('node')}, in memory, ran"
    )


def _size(f: dict[str, Any]) -> str:
    """The size a figure was measured at, when it varies between full and smoke runs."""
    p = f.get("params", {})
    parts = [
        f"{p[k]:,} {k}"
        for k in ("events", "clients", "connections", "jobs", "readers")
        if isinstance(p.get(k), int)
    ]
    return f" ({', '.join(parts)})" if parts and "mode" not in p else ""


def _how(f: dict[str, Any]) -> str:
    if f["status"] != "ok":
        return ""
    n = f.get("n", len(f["runs"]))
    params = ", ".join(f"{k} {_short(v)}" for k, v in f["params"].items())
    return f"{n} runs/blocks; {params}" if params else f"{n} runs/blocks"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def write(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "latest.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(out / "latest.json")
    (out / "latest.md").write_text(markdown(doc))
