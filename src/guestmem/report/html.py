"""The HTML report: one self-contained file (no scripts, no external resources).

Sections: the conversion matrix (docs/semantics.md §2, from :func:`guestmem.report.matrix.compute`),
the suite results, and for every scenario run an SVG memory map: pages across, steps
down, each cell showing the page's attribute and what a reader would see there, taken
from the model's provenance (``GuestMemfd.origins``). Every user-supplied string goes
through :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from guestmem.scenario.expect import describe
from guestmem.scenario.runner import PageView, RunResult

#: Provenance label → (what a reader sees, fill colour); the first listed wins in a mixed page.
SEEN: dict[str, tuple[str, str]] = {
    "ciphertext": ("ciphertext", "#b04a9c"),
    "garbage": ("garbage", "#8e44ad"),
    "random": ("random", "#6c3483"),
    "disclosed": ("guest data (disclosed)", "#e67e22"),
    "guest_private": ("guest data (private write)", "#27ae60"),
    "guest_shared": ("guest data (shared write)", "#58d68d"),
    "payload": ("host data (payload)", "#2e86c1"),
    "accepted": ("host data (accepted)", "#2874a6"),
    "host": ("host data", "#5dade2"),
    "fill": ("fill 0xab", "#f4d03f"),
    "zeroed": ("zeros (policy)", "#eaeded"),
    "init_zero": ("zeros", "#fbfcfc"),
}
UNALLOCATED = ("zeros (unallocated)", "#ffffff")
MAX_PAGES = 16
CELL_W, CELL_H, LABEL_W = 96, 22, 360

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; }
th { background: #eee; }
.pass { color: #1e8449; } .fail { color: #c0392b; font-weight: bold; } .skip, .na { color: #7f8c8d; }
.about { white-space: pre-wrap; color: #444; font-size: 13px; }
details { margin: 0.3em 0 0.8em; } summary { cursor: pointer; }
.legend span { display: inline-block; padding: 1px 6px; margin: 2px; border: 1px solid #999;
  font-size: 12px; }
"""


def e(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def seen(view: PageView) -> tuple[str, str]:
    """What a reader of the page sees, and its colour."""
    if not view.allocated:
        return UNALLOCATED
    for label, shown in SEEN.items():
        if label in view.origins:
            return shown
    return ("?", "#cccccc")


def memory_map(result: RunResult) -> str:
    """The SVG memory map of one run (empty when the backend gave no page views)."""
    rows: list[tuple[str, Sequence[PageView] | None, str]] = [("initial state", result.initial, "")]
    for s in result.steps:
        verdict = {True: "ok", False: "FAIL", None: "skip"}[s.passed]
        saw = "" if s.outcome is None else describe(s.outcome, 8)
        rows.append((f"{s.step.index}. {s.step.label()}  → {saw} [{verdict}]", s.pages, verdict))
    if result.initial is None:
        return "<p class='skip'>no memory map: the backend does not expose page provenance</p>"
    npages = min(len(result.initial), MAX_PAGES)
    width = LABEL_W + npages * CELL_W + 10
    height = (len(rows) + 1) * CELL_H + 10
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"font-family='monospace' font-size='10' role='img'>",
        f"<title>{e(result.scenario.name)} on {e(result.platform)}: memory map</title>",
    ]
    for page in range(npages):
        x = LABEL_W + page * CELL_W
        out.append(f"<text x='{x + 4}' y='14'>page {page}</text>")
    for row, (label, views, verdict) in enumerate(rows, start=1):
        y = row * CELL_H
        colour = "#c0392b" if verdict == "FAIL" else "#222"
        out.append(f"<text x='2' y='{y + 15}' fill='{colour}'>{e(_clip(label, 58))}</text>")
        if views is None:
            out.append(f"<text x='{LABEL_W + 4}' y='{y + 15}' fill='#7f8c8d'>(not run)</text>")
            continue
        for page, view in enumerate(views[:npages]):
            x = LABEL_W + page * CELL_W
            text, fill = seen(view)
            attr = "private" if view.private else "shared"
            stroke = "#922b21' stroke-width='2" if view.private else "#7f8c8d' stroke-width='1"
            tip = f"page {page}: {attr}; reader sees {text}; provenance {', '.join(view.origins) or '-'}"
            mark = "P" if view.private else "S"
            out.append(
                f"<g><title>{e(tip)}</title><rect x='{x}' y='{y}' width='{CELL_W - 4}' "
                f"height='{CELL_H - 4}' fill='{fill}' stroke='{stroke}'/>"
                f"<text x='{x + 3}' y='{y + 13}'>{mark} {e(_clip(text, 14))}</text></g>"
            )
    out.append("</svg>")
    more = len(result.initial) - npages
    note = f"<p class='skip'>first {npages} of {len(result.initial)} pages shown</p>" if more > 0 else ""
    return "".join(out) + note


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def matrix_table(cells: Sequence[Mapping[str, str]]) -> str:
    """docs/semantics.md §2 as a table: a row per platform and phase, a column per direction and policy."""
    columns: list[tuple[str, str]] = []
    rows: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    for cell in cells:
        column = (cell["direction"], cell["policy"])
        if column not in columns:
            columns.append(column)
        shown = cell["result"]
        extra = ["guest request"] if cell.get("guest_request") == "yes" else []
        extra += [cell["notes"]] if cell.get("notes") else []
        if extra:
            shown += f" ({'; '.join(extra)})"
        rows.setdefault((cell["platform"], cell["phase"]), {})[column] = shown
    head = "".join(f"<th>{e(d.replace('to_', '→ '))}<br>{e(p)}</th>" for d, p in columns)
    body = []
    for (platform, phase), values in rows.items():
        tds = "".join(f"<td>{e(values.get(c, ''))}</td>" for c in columns)
        body.append(f"<tr><th>{e(platform)}</th><th>{e(phase)}</th>{tds}</tr>")
    return f"<table><tr><th>platform</th><th>phase</th>{head}</tr>{''.join(body)}</table>"


def results_table(results: Sequence[RunResult]) -> str:
    rows = []
    for r in results:
        why = (
            r.not_applicable or r.skipped or r.error or "; ".join(f"step {s.step.index}" for s in r.failures)
        )
        rows.append(
            f"<tr><td><a href='#{e(_anchor(r))}'>{e(r.scenario.name)}</a></td><td>{e(r.platform)}</td>"
            f"<td>{e(r.abi)}</td><td>{e(r.backend)}</td><td class='{_css(r)}'>"
            f"{r.status.upper()}</td><td>{e(why)}</td></tr>"
        )
    head = (
        "<tr><th>scenario</th><th>platform</th><th>abi</th><th>backend</th><th>result</th><th>note</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _css(result: RunResult) -> str:
    """The CSS class of a run's status (``n/a`` → ``na``)."""
    return result.status.replace("/", "")


def _anchor(result: RunResult) -> str:
    return f"run-{result.scenario.name}-{result.platform}-{result.abi}"


def legend() -> str:
    items = dict.fromkeys([*SEEN.values(), UNALLOCATED])
    spans = "".join(f"<span style='background:{c}'>{e(t)}</span>" for t, c in items)
    return (
        f"<p class='legend'>{spans} <span style='border:2px solid #922b21'>P = private</span>"
        f"<span>S = shared</span></p>"
    )


def render(
    results: Sequence[RunResult],
    matrix: Sequence[Mapping[str, str]] | None,
    *,
    abi: str,
    matrix_error: str | None = None,
    title: str = "guestmem report",
) -> str:
    """The whole report as one HTML document."""
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "fail" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    na = sum(r.status == "n/a" for r in results)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{len(results)} runs: <span class='pass'>{passed} passed</span>, "
        f"<span class='fail'>{failed} failed</span>, <span class='skip'>{skipped} skipped</span>, "
        f"<span class='na'>{na} not applicable</span>.</p>",
        f"<h2 id='matrix'>Conversion matrix (docs/semantics.md §2, revision {e(abi)})</h2>",
        "<p>What the next reader sees on an allocated page after a successful conversion, "
        "or the errno, measured on the model.</p>",
    ]
    if matrix is not None:
        parts.append(matrix_table(matrix))
    else:
        parts.append(f"<p class='skip'>matrix not available: {e(matrix_error or 'unknown reason')}</p>")
    parts += ["<h2 id='results'>Suite results</h2>", results_table(results), "<h2 id='maps'>Memory maps</h2>"]
    parts.append(legend())
    by_scenario: dict[str, list[RunResult]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario.name, []).append(r)
    for name, runs in by_scenario.items():
        parts.append(f"<h3>{e(name)}</h3><p class='about'>{e(runs[0].scenario.about.strip())}</p>")
        for r in runs:
            open_ = " open" if r.status == "fail" else ""
            parts.append(
                f"<details id='{e(_anchor(r))}'{open_}><summary>{e(r.platform)} ({e(r.abi)}): "
                f"<span class='{_css(r)}'>{r.status.upper()}</span></summary>{memory_map(r)}</details>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
