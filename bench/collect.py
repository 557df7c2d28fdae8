"""From the workers' raw results to the catalogue's figures (see :mod:`bench.figures`)."""

from __future__ import annotations

from typing import Any

from bench.figures import (
    ANSWER_STATES,
    DELIVERY_RATES,
    SIZES,
    SPECS,
    SSE_CLIENTS,
    SSE_RESUME_SIZES,
    SSE_SYSTEMS,
    error,
    figure,
    skipped,
)


def _runs_ok(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    ok = [r for r in runs if "error" not in r]
    errs = [r["error"] for r in runs if "error" in r]
    return ok, (errs[0] if errs else None)


def ingest(raw: dict[str, Any], params: dict[str, Any], redis_reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rounds: list[dict[str, dict[str, Any]]] = raw.get("rounds", [])
    for mode in ("flat", "paced"):
        for system in ("genjobs", "nats", "redis"):
            key = f"ingest.{mode}.{system}"
            if system == "redis" and redis_reason:
                for q in ("rate", "p50_ms", "p99_ms"):
                    out[f"{key}.{q}"] = skipped(redis_reason)
                continue
            runs, err = _runs_ok([r[f"{mode}.{system}"] for r in rounds if f"{mode}.{system}" in r])
            p = {"jobs": params["jobs"], "mode": mode}
            p["duration_s"] = params[f"{mode}_duration"]
            if mode == "paced":
                p["rate_per_job"] = params["rate"]
            for q in ("rate", "p50_ms", "p99_ms"):
                if err or not runs:
                    out[f"{key}.{q}"] = error(err or "not run")
                else:
                    out[f"{key}.{q}"] = figure([r[q] for r in runs], params=p)
    for other in ("nats", "redis"):
        key = f"ingest.ratio.vs_{other}"
        if other == "redis" and redis_reason:
            out[key] = skipped(redis_reason)
            continue
        ratios = []
        for r in rounds:
            a, b = r.get("flat.genjobs", {}), r.get(f"flat.{other}", {})
            if "rate" in a and "rate" in b:
                ratios.append(a["rate"] / b["rate"])
        out[key] = figure(ratios, params={"how": "per round, genjobs tokens/s / baseline msgs/s"})
    return out


def resume(raw: dict[str, Any], params: dict[str, Any], redis_reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "error" in raw:
        return {k: error(raw["error"]) for k in SPECS if k.startswith(("resume.", "catchup."))}
    for n in SIZES:
        g = raw["genjobs"].get(str(n))
        for q in ("p50", "p99"):
            key = f"resume.genjobs.{n}.{q}_ms"
            out[key] = figure(g[f"{q}_ms"], params={"samples_per_block": params["samples"]})
            rkey = f"resume.redis.{n}.{q}_ms"
            if redis_reason:
                out[rkey] = skipped(redis_reason)
            else:
                r = raw["redis"][str(n)]
                out[rkey] = figure(r[f"{q}_ms"], params={"samples_per_block": r["n"]})
    small, large = raw["genjobs"][str(SIZES[0])]["p50_ms"], raw["genjobs"][str(SIZES[-1])]["p50_ms"]
    out["resume.genjobs.flatness"] = figure(
        [b / a for a, b in zip(small, large, strict=True)], params={"how": "per block"}
    )
    c = raw["catchup"]
    out["catchup.genjobs.ms"] = figure(
        c["median_ms"], params={"events": c["events"], "reads_per_block": params["catchup_reads"]}
    )
    return out


def abort(raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in SPECS if k.startswith("abort.")]
    if "error" in raw:
        return {k: error(raw["error"]) for k in keys}
    p = {"aborts_per_block": raw["jobs_per_block"], "tokens_per_s_per_job": raw["rate"]}
    return {k: figure(raw[k.split(".")[1]][k.split(".")[2]], params=p) for k in keys}


def answers(raw: dict[str, Any]) -> dict[str, Any]:
    """Reply time per job state (bench/answers.py), and the worst state's p99."""
    keys = [k for k in SPECS if k.startswith("answers.")]
    if "error" in raw:
        return {k: error(raw["error"]) for k in keys}
    out: dict[str, Any] = {}
    p = {"requests_per_cell": raw["repeat"], "requests": raw["requests"]}
    for state in ANSWER_STATES:
        got = raw["states"].get(state)
        for q in ("p50", "p99", "max"):
            key = f"answers.{state}.{q}_ms"
            out[key] = (
                figure([got[f"{q}_ms"]], params={**p, "n": got["n"]})
                if got
                else error("no requests in this state")
            )
    worst = [v["p99_ms"] for v in raw["states"].values()]
    out["answers.worst.p99_ms"] = figure([max(worst)], params=p)
    out["answers.not_exactly_one"] = figure([float(raw["not_exactly_one"])], params=p)
    return out


def memory(jobs: dict[str, Any], readers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "error" in jobs:
        out["memory.job_kb"] = error(jobs["error"])
    else:
        out["memory.job_kb"] = figure(
            [b / 1024 for b in jobs["bytes_per_job_batches"]],
            value=jobs["bytes_per_job"] / 1024,
            params={"jobs": jobs["jobs"], "spread": "per third of the jobs"},
        )
    if "error" in readers:
        for k in ("memory.reader_kb", "readers.idle_cpu_pct"):
            out[k] = error(readers["error"])
    else:
        out["memory.reader_kb"] = figure(
            [b / 1024 for b in readers["bytes_per_reader_batches"]],
            value=readers["bytes_per_reader"] / 1024,
            params={"readers": readers["readers"], "spread": "per third of the readers"},
        )
        out["readers.idle_cpu_pct"] = figure(
            readers["idle_cpu_pct_windows"],
            value=readers["idle_cpu_pct"],
            params={
                "readers": readers["readers"],
                "window_s": readers["window_s"],
                "nats_server_cpu_pct": readers["nats_server_cpu_pct"],
                "spread": "five sub-windows",
            },
        )
    return out


def delivery(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rate in DELIVERY_RATES:
        run = raw.get("runs", {}).get(str(rate), {"error": raw.get("error", "not run")})
        keys = (f"readers.delivery.{rate}.p50_ms", f"readers.delivery.{rate}.p99_ms")
        if "error" in run:
            out.update({k: error(run["error"]) for k in keys})
            continue
        r = run["readers"]
        p = {
            "readers": r["readers"],
            "jobs": r["jobs"],
            "deliveries": r["deliveries"],
            "producer_tokens_per_s": run["producer"]["rate"],
            "spread": "the run cut in three by emit time",
        }
        out[keys[0]] = figure(r["p50_ms"], params=p)
        out[keys[1]] = figure(r["p99_ms"], params={**p, "p99_pooled_ms": r["p99_ms_all"]})
    return out


def aggregator(raw: dict[str, Any]) -> dict[str, Any]:
    names = {
        "aggregator.events_per_s": "aggregate_events_per_s",
        "aggregator.long_with_reads.events_per_s": "aggregate_10x_with_reads_events_per_s",
        "aggregator.coalesce.events_per_s": "coalesce_events_per_s",
    }
    if "error" in raw:
        return {k: error(raw["error"]) for k in names}
    out = {}
    for key, src in names.items():
        r = raw[src]
        out[key] = figure(
            [r["min"], r["max"]],
            value=r["median"],
            n=raw["repeat"],
            params={"fixture": raw["fixture"], "events": raw["events"], "repeat": raw["repeat"]},
        )
    return out


def sse(raw: dict[str, Any], params: dict[str, Any], ds_reason: str | None) -> dict[str, Any]:
    """Run ``i`` of the plan's client counts fills the keys of ``SSE_CLIENTS[i]`` (the smoke
    plan holds fewer clients; ``params`` says how many)."""
    out: dict[str, Any] = {}
    for i, n in enumerate(SSE_CLIENTS):
        actual = params["clients"][i]
        for system, _ in SSE_SYSTEMS:
            k = f"sse.{system}.{n}"
            keys = [key for key in SPECS if key.startswith(k + ".")]
            if system == "ds" and ds_reason:
                out.update({key: skipped(ds_reason) for key in keys})
                continue
            run = raw.get("runs", {}).get(f"{system}.{actual}", {"error": "not run"})
            if "error" in run:
                out.update({key: error(run["error"]) for key in keys})
                continue
            c = run["clients"]
            p = {
                "clients": actual,
                "jobs": c["jobs"],
                "tokens_per_s_per_job": params["rate"],
                "duration_s": params["duration"],
                "deliveries": c["deliveries"],
                "client_cpu_pct": round(c["client_cpu_pct"], 1),
                "producer_cpu_pct": round(run["producer"]["producer_cpu_pct"], 1),
                "nats_server_cpu_pct": run["nats_server_cpu_pct"],
                "server_cpu_pct": round(run["server_cpu_pct"], 1),
                "offered_deliveries_per_s": round(run["offered_per_s"]),
                "delivering_s": round(run["delivering_s"], 1),
            }
            spread = {**p, "spread": "the run cut in three by emit time"}
            out[f"{k}.p50_ms"] = figure(c["p50_ms"], value=c["p50_ms_all"], params=spread)
            out[f"{k}.p99_ms"] = figure(
                c["p99_ms"], value=c["p99_ms_all"], params={**spread, "max_ms": c["max_ms"]}
            )
            out[f"{k}.deliveries_per_s"] = figure([run["deliveries_per_s"]], params=p)
            out[f"{k}.cpu_per_1000_pct"] = figure([run["cpu_per_1000_pct"]], params=p)
            out[f"{k}.idle_kb"] = figure(
                [run["idle_kb"]],
                params={"connections": actual - c["jobs"], "rss_start_mb": run["rss_start_mb"]},
            )
            windows = run["idle_cpu_pct_windows"]
            out[f"{k}.idle_cpu_pct"] = figure(
                windows,
                value=sum(windows) / len(windows),
                params={
                    "connections": actual,
                    "window_s": params["idle_window"],
                    "spread": "five sub-windows",
                },
            )
    for system, _ in SSE_SYSTEMS:
        keys = [f"sse.{system}.resume.{n}.{q}_ms" for n in SSE_RESUME_SIZES for q in ("p50", "p99")]
        if system == "ds" and ds_reason:
            out.update({key: skipped(ds_reason) for key in keys})
            continue
        res = raw.get("resume", {}).get(system, {"error": "not run"})
        for i, n in enumerate(SSE_RESUME_SIZES):
            actual = params["resume_sizes"][i]
            for q in ("p50", "p99"):
                key = f"sse.{system}.resume.{n}.{q}_ms"
                if "error" in res:
                    out[key] = error(res["error"])
                    continue
                out[key] = figure(
                    res[str(actual)][f"{q}_ms"],
                    params={
                        "events": actual,
                        "samples_per_block": params["resume_samples"],
                        "how": "new connection, events after the 10th last one",
                    },
                )
    n = SSE_CLIENTS[0]
    for key, field, how in (
        ("sse.vs_ds.2000.throughput_x", "deliveries_per_s", "genjobs / reference"),
        ("sse.vs_ds.2000.p99_x", "p99_ms", "genjobs / reference"),
    ):
        if ds_reason:
            out[key] = skipped(ds_reason)
            continue
        a, b = out[f"sse.genjobs.{n}.{field}"], out[f"sse.ds.{n}.{field}"]
        if a["status"] != "ok" or b["status"] != "ok":
            out[key] = error(a.get("reason") or b.get("reason") or "not run")
            continue
        out[key] = figure([a["median"] / b["median"]], params={"how": how})
    return out


def streams(raw: dict[str, Any]) -> dict[str, Any]:
    """Section 8 (bench/streams.py): rates, catch-up and SSE per system; genjobs' ratios
    (above 1: genjobs is faster) per round or block, against each peer."""
    from bench.figures import DS_GENJOBS, DS_PEERS, DS_SYSTEMS

    keys = [k for k in SPECS if k.startswith("streams.")]
    if "error" in raw:
        return {k: error(raw["error"]) for k in keys}
    skipped_systems: dict[str, str] = raw.get("skipped", {})
    out: dict[str, Any] = {}

    def unavailable(*systems: str) -> dict[str, Any] | None:
        for system in systems:
            reason = skipped_systems.get(system)
            if reason is not None:
                return error(reason) if reason.startswith("error:") else skipped(reason)
        return None

    def ratio_figures(kind: str, pairs: list[dict[str, float]], how: str, faster: str) -> None:
        """``pairs``: per round/block, a value per system; ``faster`` "higher" or "lower"."""
        for g in DS_GENJOBS:
            for peer in DS_PEERS:
                key = f"streams.{kind}.ratio.{g}.vs_{peer}"
                vals = [
                    (p[g] / p[peer] if faster == "higher" else p[peer] / p[g])
                    for p in pairs
                    if p.get(g) and p.get(peer)
                ]
                out[key] = unavailable(peer, g) or (
                    figure(vals, params={"how": how}) if vals else error("not measured")
                )

    # append: one figure per system and shape; ratios per round
    rounds: list[dict[str, Any]] = raw.get("append", [])
    for size in ("50b", "1kb"):
        for w in (1, 100):
            shape = f"{size}.{w}w"
            for system in DS_SYSTEMS:
                key = f"streams.append.{shape}.{system}.rate"
                got = [r[f"{shape}.{system}"] for r in rounds if f"{shape}.{system}" in r]
                runs, err = _runs_ok(got)
                p: dict[str, Any] = {"writers": w, "size": size}
                if runs:
                    p["p99_ms"] = round(max(r["p99_ms"] for r in runs), 2)
                    for proc in runs[0]["cpu_pct"]:
                        p[f"{proc}_cpu_pct"] = max(r["cpu_pct"][proc] for r in runs)
                out[key] = unavailable(system) or (
                    error(err or "not run")
                    if err or not runs
                    else figure([r["rate"] for r in runs], params=p)
                )
            pairs = [
                {s: r[f"{shape}.{s}"].get("rate", 0.0) for s in DS_SYSTEMS if f"{shape}.{s}" in r}
                for r in rounds
            ]
            ratio_figures(f"append.{shape}", pairs, "per round, appends/s over appends/s", "higher")
    # catch-up: ms per full read, median per block; ratios block by block
    catchup: dict[str, Any] = raw.get("catchup", {})
    medians: dict[str, list[float]] = {}
    for system in DS_SYSTEMS:
        key = f"streams.catchup.{system}.ms"
        c = catchup.get(system)
        if unavailable(system) or c is None:
            out[key] = unavailable(system) or error("not run")
            continue
        if "error" in c["fill"]:
            out[key] = error(c["fill"]["error"])
            continue
        blocks, err = _runs_ok(c["blocks"])
        if err or not blocks:
            out[key] = error(err or "not run")
            continue
        medians[system] = [sorted(b["ms"])[len(b["ms"]) // 2] for b in blocks]
        out[key] = figure(
            medians[system],
            params={
                "messages": blocks[0]["messages"],
                "requests_per_read": blocks[0]["requests"],
                "fill_s": round(c["fill"]["seconds"], 2),
                "how": "median of each block's reads",
            },
        )
    n_blocks = max((len(v) for v in medians.values()), default=0)
    pairs = [{s: v[b] for s, v in medians.items() if b < len(v)} for b in range(n_blocks)]
    ratio_figures("catchup", pairs, "per block, peer ms over genjobs ms", "lower")
    # SSE: p50/p99 over every run's thirds; ratios of each round's pooled percentiles
    sse_rounds: list[dict[str, Any]] = raw.get("sse", [])
    for system in DS_SYSTEMS:
        runs, err = _runs_ok([r[system] for r in sse_rounds if system in r])
        for q in ("p50", "p99"):
            key = f"streams.sse.{system}.{q}_ms"
            if unavailable(system) or err or not runs:
                out[key] = unavailable(system) or error(err or "not run")
                continue
            p = {
                "readers": runs[0]["readers"],
                "streams": runs[0]["streams"],
                "deliveries": sum(r["deliveries"] for r in runs),
                "writer_appends_per_s": round(min(r["writer"]["rate"] for r in runs), 1),
                f"{q}_pooled_ms": [round(r[f"{q}_ms_all"], 2) for r in runs],
                "server_cpu_pct": max(r["cpu_pct"].get("server", 0.0) for r in runs),
                "spread": "each run cut in three by emit time",
            }
            out[key] = figure([x for r in runs for x in r[f"{q}_ms"]], params=p)
    for q in ("p50", "p99"):
        pairs = [
            {s: v[f"{q}_ms_all"] for s, v in r.items() if "error" not in v} for r in sse_rounds
        ]
        ratio_figures(f"sse.{q}", pairs, f"per round, peer pooled {q} over genjobs'", "lower")
    return out
