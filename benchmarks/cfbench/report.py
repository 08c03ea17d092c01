"""The report: the targets, and the tables as text or Markdown (the JSON is the report itself)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from workload import ROUTES

from cfbench.four_models import FOUR_NAMES, PARALLEL_WORKERS
from cfbench.models import SPECS
from cfbench.strategies import STRATEGIES


def _cell(report: dict[str, Any], spec: str, strategy: str) -> dict[str, Any] | None:
    for c in report.get("cells", []):
        if c["spec"] == spec and c["strategy"] == strategy:
            return c
    return None


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cell_stats(c: dict[str, Any]) -> dict[str, float | None]:
    loads = c["load"]

    def m(key: str) -> float | None:
        return _med([r[key] for r in loads if r.get(key) is not None])

    reloads = [r["load_s"] for r in c.get("reload", [])]
    return {
        "save_s": _med(c["save_s"]),
        "load_s": m("load_s"),
        "reload_s": _med(reloads),
        "first_predict_s": m("first_predict_s"),
        "to_first_s": _med([r["load_s"] + r["first_predict_s"] for r in loads]),
        "size_mb": c["size_mb"],
        "load_rss_mb": m("load_rss_mb"),
        "peak_rss_mb": m("peak_rss_mb"),
        "written_mb": m("written_mb"),
        "connect_s": m("connect_s"),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets, then issue 13's, each with the measured value and whether it is met.

    A line whose ``op`` is None gives a figure for scale and is not a target.
    """
    out: list[dict[str, Any]] = []
    issue = 5

    def add(name: str, value: float | None, op: str | None, limit: float, unit: str = "") -> None:
        met = None
        if op is not None and value is not None:
            met = value <= limit if op == "<=" else value >= limit
        out.append(
            {
                "target": name,
                "value": value,
                "op": op,
                "limit": limit,
                "unit": unit,
                "met": met,
                "issue": issue,
            }
        )

    for spec in SPECS:
        raw = _cell(report, spec, "raw")
        cf = _cell(report, spec, "cloudflow_run")
        if raw is None or cf is None:
            continue
        r, c = cell_stats(raw), cell_stats(cf)
        add(f"{spec}: log_bundle / raw save", _ratio(c["save_s"], r["save_s"]), "<=", 1.15, "x")
        add(f"{spec}: load_bundle runs:/ / raw load", _ratio(c["load_s"], r["load_s"]), "<=", 1.2,
            "x")  # fmt: skip
        add(f"{spec}: same, reload (digest cache warm)", _ratio(c["reload_s"], r["load_s"]), "<=",
            1.2, "x")  # fmt: skip
        others = ((_cell(report, spec, "mlflow_run"), "MLflow runs:/ load", 5),
                  (_cell(report, spec, "cloudpickle"), "unpickle", 10))  # fmt: skip
        for other, what, limit in others:
            if other is None:
                continue
            theirs = cell_stats(other)["load_s"]
            add(f"{spec}: {what} / load_bundle", _ratio(theirs, c["load_s"]), ">=", limit, "x")
            add(f"{spec}: same, reload", _ratio(theirs, c["reload_s"]), ">=", limit, "x")
            add(f"{spec}: for scale, {what} / raw load", _ratio(theirs, r["load_s"]), None, limit,
                "x")  # fmt: skip
        add(f"{spec}: bundle size / raw size", _ratio(c["size_mb"], r["size_mb"]), "<=", 1.01, "x")
        limit = 0.01 * (c["size_mb"] or 0)
        add(f"{spec}: MB written by load_bundle runs:/", c["written_mb"], "<=", limit, "MB")
        for again in report.get("again", []):
            if again["spec"] == spec and "error" not in again:
                add(f"{spec}: repeat log_bundle / raw save (stretch)",
                    _ratio(again["again_s"], r["save_s"]), "<=", 0.1, "x")  # fmt: skip
                add(f"{spec}: store growth on repeat (stretch)", again["growth_mb"], "<=", 1.0,
                    "MB")  # fmt: skip
    overhead = report.get("overhead", {}).get("overhead_us")
    if overhead is not None:
        add("Bundle.predict overhead", overhead, "<=", 20, "us")
    imported = report.get("imports", {}).get("frameworks imported by import cloudflow")
    if imported is not None:
        add("ML frameworks imported by `import cloudflow`", len(imported), "<=", 0)
    issue = 13
    for first in report.get("first_log", []):
        if "error" not in first:
            add(
                f"{first['spec']}: first log_bundle of a process, s (<= 1.15x raw save + 0.2 s)",
                first["log_s"],
                "<=",
                1.15 * first["raw_save_s"] + 0.2,
                "s",
            )
    four = report.get("four", {})
    if "bundle" in four:
        raw, bundle = four["raw"], four["bundle"]
        raw_sum = sum(r["load_s"] for r in raw.values())
        route = raw[ROUTES[four["route"]]]
        add(
            "four models: eager load / sum of the raw loads (for scale)",
            _ratio(bundle["eager"]["load_s"], raw_sum),
            None,
            0,
            "x",
        )
        add(
            f"four models: load in {PARALLEL_WORKERS} threads / sum of the raw loads",
            _ratio(bundle["parallel"]["load_s"], raw_sum),
            "<=",
            0.7,
            "x",
        )
        add(
            f"four models: lazy load + 1st {four['route']} answer / raw load + 1st of that model",
            _ratio(bundle["lazy"]["to_first_s"], route["to_first_s"]),
            "<=",
            1.2,
            "x",
        )
        add(
            f"four models: lazy peak RSS / raw {four['route']} model's peak RSS",
            _ratio(bundle["lazy"]["peak_rss_mb"], route["peak_rss_mb"]),
            "<=",
            1.2,
            "x",
        )
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10 and digits > 1:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _fx(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(report: dict[str, Any], spec: str) -> list[list[str]]:
    raw = _cell(report, spec, "raw")
    base = cell_stats(raw) if raw else {}
    rows = []
    for c in report.get("cells", []):
        if c["spec"] != spec:
            continue
        s = cell_stats(c)
        label = STRATEGIES[c["strategy"]].label
        if c["errors"] and s["load_s"] is None:
            label += " (error)"
        rows.append([
            label,
            _fmt(s["save_s"]),
            _fx(_ratio(s["save_s"], base.get("save_s"))),
            _fmt(s["load_s"], 3),
            _fx(_ratio(s["load_s"], base.get("load_s"))),
            _fmt(s["reload_s"], 3),
            _fmt(s["first_predict_s"], 3),
            _fmt(s["to_first_s"], 3),
            _fx(_ratio(s["to_first_s"], base.get("to_first_s"))),
            _fmt(s["size_mb"], 1),
            _fx(_ratio(s["size_mb"], base.get("size_mb"))),
            _fmt(s["load_rss_mb"], 0),
            _fmt(s["peak_rss_mb"], 0),
            _fmt(s["written_mb"], 1),
        ])  # fmt: skip
    return rows


HEADERS = ["strategy", "save s", "save/raw", "load s", "load/raw", "reload s", "1st predict s",
           "load+1st s", "load+1st/raw", "size MB", "size/raw", "RSS load MB", "RSS peak MB",
           "written MB"]  # fmt: skip


def render_text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(headers, widths, strict=True)))]  # fmt: skip
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in
                               enumerate(zip(row, widths, strict=True))))  # fmt: skip
    return "\n".join(lines)


def render_markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_header(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; {m['os']}")
    if m["load_average_1min"] > 0.5:
        print(f"WARNING: load average {m['load_average_1min']} at start: other work is running")
    print(f"Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"Command: {report['command']}")
    print(flush=True)


def render(report: dict[str, Any], markdown: bool) -> str:
    table = render_markdown_table if markdown else render_text_table
    out: list[str] = []
    s = report["sizes"]
    out.append(
        f"Sizes: {s['name']} (saves: median of {s['save_repeat']}, loads: median of "
        f"{s['load_repeat']} fresh processes); parameters: "
        + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in report.get("parameters", {}).items() if v)
    )
    out.append("")
    for spec in SPECS:
        rows = table_rows(report, spec)
        if not rows:
            continue
        out.append(("### " if markdown else "") + SPECS[spec].title)
        out.append("")
        out.append(table(HEADERS, rows))
        out.append("")
    again = [a for a in report.get("again", []) if "error" not in a]
    if again:
        out.append(("### " if markdown else "") + "Logging an unchanged bundle again (same store)")
        out.append("")
        rows = []
        for a in again:
            raw = _cell(report, a["spec"], "raw")
            raw_save = cell_stats(raw)["save_s"] if raw else None
            rows.append([a["spec"], _fmt(a["first_s"]), _fmt(a["again_s"]),
                         _fx(_ratio(a["again_s"], raw_save)), _fmt(a["growth_mb"], 2)])  # fmt: skip
        headers = ["model", "first log s", "again s (median)", "again/raw save", "store +MB each"]
        out.append(table(headers, rows))
        out.append("")
    extra = []
    o = report.get("overhead", {})
    if "overhead_us" in o:
        calls = f"{o['direct_us']:.2f} / {o['bundle_us']:.2f} / {o['pyfunc_us']:.1f} us"
        extra.append(["Bundle.predict overhead (median)", f"{o['overhead_us']:.1f} us"])
        extra.append(["direct call / Bundle.predict / mlflow pyfunc predict", calls])
    for k, v in report.get("imports", {}).items():
        extra.append(
            [f"`{k}`" if markdown else k, f"{v:.2f} s" if isinstance(v, float) else str(v)]
        )
    if report.get("worker_import_s") is not None:
        extra.append(["libraries imported before each load (not in load s)",
                      f"{report['worker_import_s']:.2f} s"])  # fmt: skip
    if extra:
        out.append(table(["measure", "value"], extra))
        out.append("")
    out += render_first_log(report, table, markdown)
    out += render_four(report, table, markdown)
    if report.get("targets"):
        issues = sorted({t.get("issue", 5) for t in report["targets"]})
        heading = "issue 5" if issues == [5] else "issues " + " and ".join(map(str, issues))
        out.append(("### " if markdown else "") + f"Targets ({heading})")
        out.append("")
        rows = []
        for t in report["targets"]:
            met = {True: "met", False: "MISSED", None: "-"}[t["met"]]
            value = t["value"]
            shown = "-" if value is None else f"{_fmt(value)}{t['unit']}"
            limit = f"{t['op']} {_fmt(t['limit'])}{t['unit']}" if t["op"] else ""
            rows.append([t["target"], shown, limit, met if t["op"] else ""])
        out.append(table(["target", "measured", "limit", ""], rows))
        out.append("")
    errors = [(c["spec"], c["strategy"], e) for c in report.get("cells", []) for e in c["errors"]]
    for spec, strategy, error in errors:
        out.append(f"ERROR {spec} {strategy}: {error.strip().splitlines()[-1]}")
    extra_errors = [(f"{e['spec']} first log_bundle", e["error"])
                    for e in report.get("first_log", []) if "error" in e]  # fmt: skip
    if "error" in report.get("four", {}):
        extra_errors.append(("four-model bundle", report["four"]["error"]))
    for what, error in extra_errors:
        out.append(f"ERROR {what}: {error.strip().splitlines()[-1]}")
    out.append(
        f"Total time: {report.get('total_s', 0):.0f} s; load average (1 min) at start "
        f"{report['machine']['load_average_1min']}, at end {report.get('load_average_1min_end')}"
    )
    for name, text in report.get("profiles", {}).items():
        out.append("")
        out.append(f"Profile: {name}")
        out.append(text)
    return "\n".join(out)


def render_first_log(
    report: dict[str, Any], table: Callable[[list[str], list[list[str]]], str], markdown: bool
) -> list[str]:
    """The first log_bundle of a new process against the raw save in a new process."""
    entries = [e for e in report.get("first_log", []) if "error" not in e]
    if not entries:
        return []
    out = [
        ("### " if markdown else "")
        + "First log_bundle of a new process (raw save in a new process)",
        "",
    ]
    rows = []
    for e in entries:
        rows.append(
            [
                e["spec"],
                _fmt(e["raw_save_s"]),
                _fmt(e["start_run_s"]),
                _fmt(e["log_s"]),
                _fx(_ratio(e["log_s"], e["raw_save_s"])),
                _fmt(1.15 * e["raw_save_s"] + 0.2),
                _fmt(e["end_run_s"]),
                _fmt(e.get("second_log_s")),
            ]
        )
    headers = [
        "model",
        "raw save s",
        "start_run s",
        "log_bundle s",
        "log/raw",
        "limit s",
        "end_run s",
        "2nd log_bundle s",
    ]
    return [*out, table(headers, rows), ""]


def render_four(
    report: dict[str, Any], table: Callable[[list[str], list[list[str]]], str], markdown: bool
) -> list[str]:
    """The four-model bundle: raw loads, eager, parallel and lazy loads, and serving."""
    four = report.get("four", {})
    if "bundle" not in four:
        return []
    raw, bundle, route = four["raw"], four["bundle"], four["route"]
    raw_sum = sum(raw[n]["load_s"] for n in FOUR_NAMES)
    base = raw[ROUTES[route]]
    out = [
        ("### " if markdown else "")
        + f"Four-model bundle routed by input_type (first answer: one {route} request)",
        "",
    ]
    rows = []

    def row(label: str, e: dict[str, Any], ratio: str, rss_ratio: str = "") -> None:
        rows.append(
            [
                label,
                _fmt(e.get("load_s"), 3),
                _fmt(e.get("first_predict_s"), 3),
                _fmt(e.get("to_first_s"), 3),
                ratio,
                _fmt(e.get("peak_rss_mb"), 0),
                rss_ratio,
            ]
        )

    for name in FOUR_NAMES:
        row(f"raw load of {name} alone", raw[name], "")
    rows.append(
        ["sum of the four raw loads (baseline)", _fmt(raw_sum, 3), "-", "-", "1.00x sum", "-", ""]
    )
    for key, label in (
        ("eager", "bundle, one after the other (CLOUDFLOW_LOAD_WORKERS=1)"),
        ("parallel", f"bundle, CLOUDFLOW_LOAD_WORKERS={PARALLEL_WORKERS}"),
    ):
        row(label, bundle[key], f"{_fx(_ratio(bundle[key]['load_s'], raw_sum))} sum")
    lazy = bundle["lazy"]
    row(
        f"bundle, lazy=True, then the {route} answer",
        lazy,
        f"{_fx(_ratio(lazy['to_first_s'], base['to_first_s']))} raw {route}",
        _fx(_ratio(lazy["peak_rss_mb"], base["peak_rss_mb"])),
    )
    headers = [
        "load (fresh process)",
        "load s",
        "1st answer s",
        "load+1st s",
        "ratio",
        "RSS peak MB",
        "RSS/raw " + route,
    ]
    out += [table(headers, rows), ""]
    serve = four.get("serve")
    if serve:
        rows = [
            [f"mlflow models serve, {key}", _fmt(e.get("ping_s")), _fmt(e.get("first_answer_s"))]
            for key, e in serve.items()
        ]
        headers = ["server (from the process start)", "/ping 200 s", "first 200 of /invocations s"]
        out += [table(headers, rows), ""]
    return out
