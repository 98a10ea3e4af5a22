"""The HTML report: one self-contained file (no scripts, no external resources) that reads
at a glance on screen and on paper.

Sections: a header (version, date, backend, revisions, platforms) and contents; the
conversion matrix (docs/semantics.md §2, from :func:`guestmem.report.matrix.compute`) coloured by
kind of cell, with a legend for every note; the suite results, a row per scenario and a
column per platform; and per run a memory map: pages across, steps down, each page showing
its attribute, what a reader would see there (the model's provenance,
``GuestMemfd.origins``), its pins and host mappings, with the range each step touched
marked. Maps of the review's examples and of every failure are open; the others open with
a click, and all of them print. Every user-supplied string goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from guestmem import __version__
from guestmem.backend.base import PageView
from guestmem.printable import printable
from guestmem.report.matrix import KINDS, NOTES, PHASES, POLICIES, general_notes
from guestmem.scenario.expect import describe
from guestmem.scenario.format import Step
from guestmem.scenario.runner import OBSERVED_PAGES, OBSERVED_STEPS, RunResult, StepResult
from guestmem.spec import platforms as known_platforms
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import PAGE_SIZE


@dataclass(frozen=True)
class Seen:
    """What a reader of a page sees: a short code for the cell, the words for the legend
    and the tooltip, and the cell's colours (background, text; WCAG AA apart)."""

    code: str
    words: str
    background: str
    text: str


#: Provenance label → what a reader sees; the first listed wins in a mixed page. Colours
#: differ in lightness as well as hue, so they stay apart in print and for colour-blind
#: readers; each text colour has a contrast ratio of at least 4.5 against its background.
SEEN: dict[str, Seen] = {
    "disclosed": Seen("disclosed", "guest data, disclosed at the guest's request", "#f57c00", "#000000"),
    "lost": Seen("lost", "guest data lost to a conversion of other pages (zeros)", "#b71c1c", "#ffffff"),
    "ciphertext": Seen("cipher", "ciphertext (under the VM's key)", "#4a148c", "#ffffff"),
    "garbage": Seen("garbage", "garbage (plaintext read through the VM's key)", "#ce93d8", "#000000"),
    "random": Seen("random", "random bytes (rfc-v5 scramble)", "#5d4037", "#ffffff"),
    "guest_private": Seen("g-priv", "guest data, written while private", "#1b5e20", "#ffffff"),
    "guest_shared": Seen("g-shared", "guest data, written while shared", "#a5d6a7", "#000000"),
    "payload": Seen("payload", "host data carried in before launch (payload)", "#0d47a1", "#ffffff"),
    "accepted": Seen("accepted", "host data the guest accepted", "#64b5f6", "#000000"),
    "host": Seen("host", "host data", "#d6eaff", "#000000"),
    "fill": Seen("0xab", "0xab fill (NONE on sw_protected)", "#ffe082", "#000000"),
    "zeroed": Seen("zeroed", "zeros written by a policy or the platform", "#bdbdbd", "#000000"),
    "init_zero": Seen("zeros", "zeros (allocated, never written)", "#eeeeee", "#000000"),
}
UNALLOCATED = Seen("unalloc", "zeros (not allocated)", "#ffffff", "#333333")
UNKNOWN = Seen("?", "unknown provenance", "#ffffff", "#b00020")
#: Pages across and steps down a memory map shows (what a run observes).
MAX_PAGES = OBSERVED_PAGES
MAX_STEPS = OBSERVED_STEPS
#: Scenarios whose maps are open in the report: the review's worked examples.
OPEN_PREFIX = "review_"

STYLE = """
:root { color-scheme: light; --ink: #1a1a1a; --muted: #555555; --rule: #9e9e9e; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0 auto; padding: 1.5em 2em 3em; max-width: 96em; color: var(--ink); background: #ffffff; }
h1 { font-size: 1.7em; margin: 0 0 0.2em; }
h2 { font-size: 1.3em; margin: 1.6em 0 0.4em; border-bottom: 2px solid #d0d0d0; padding-bottom: 0.15em; }
h3 { font-size: 1.1em; margin: 1.3em 0 0.2em; }
h4 { font-size: 1em; margin: 1em 0 0.3em; }
a { color: #0b4f9c; }
code, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.1em 1em; margin: 0.6em 0; }
.meta dt { font-weight: 600; color: var(--muted); } .meta dd { margin: 0; }
.toc ol { margin: 0.2em 0; padding-left: 1.6em; } .toc li { margin: 0.1em 0; }
.toc .scenarios { columns: 3 16em; font-size: 0.92em; }
.counts { font-size: 1.05em; }
.verdict { display: inline-block; padding: 0 0.45em; border-radius: 3px; font-weight: 600; }
.pass { background: #d8f0da; color: #1b5e20; }
.fail { background: #ffd6d6; color: #a00000; }
.skip { background: #fff1c2; color: #5c4300; }
.na { background: #e6e9f5; color: #2a3470; }
.none { color: var(--muted); }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid var(--rule); padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
thead th { background: #eeeeee; }
tbody th { background: #f7f7f7; font-weight: 600; }
td { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
.matrix td { white-space: nowrap; }
.k-guarantee { background: #cfe9d1; color: #000000; }
.k-native { background: #fff4c4; color: #000000; }
.k-prelaunch { background: #cde3fb; color: #000000; }
.k-unsupported { background: #e6e6e6; color: #3d3d3d; }
.marks { font-size: 0.8em; vertical-align: super; margin-left: 0.15em; }
.legend { display: flex; flex-wrap: wrap; gap: 0.35em 0.5em; margin: 0.4em 0 0.8em; padding: 0;
  list-style: none; font-size: 0.88em; }
.legend li { display: flex; align-items: center; gap: 0.4em; }
.swatch { display: inline-block; min-width: 4.8em; padding: 0.1em 0.35em; border: 1px solid var(--rule);
  text-align: center; font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em; }
dl.notes { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 0.8em; font-size: 0.88em; }
dl.notes dt { font-weight: 700; } dl.notes dd { margin: 0; }
.about { white-space: pre-wrap; color: #333333; font-size: 0.92em; margin: 0.2em 0 0.5em; max-width: 60em; }
.runs { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 0.2em 2.5em; }
details.run { margin: 0.2em 0 0.6em; }
details.run > summary { cursor: pointer; font-weight: 600; padding: 0.15em 0; }
.map { border-collapse: separate; border-spacing: 3px; font-size: 0.82em; margin: 0.3em 0 0.6em; }
.map th, .map td { border: none; padding: 0; }
.map thead th { background: none; font-weight: 600; text-align: center; padding: 0 0.3em;
  font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: nowrap; }
.map .step { min-width: 16em; max-width: 30em; padding: 0.15em 0.5em 0.15em 0; background: none;
  font-weight: normal; font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace;
  overflow-wrap: anywhere; }
.map .step .saw { display: block; color: #333333; }
.map .step.failed, .map .step.failed .saw { color: #a00000; }
.map .step .ok { color: #1b5e20; font-weight: 600; }
.map .step .bad { color: #a00000; font-weight: 700; }
.map .step .skipped { color: #5c4300; font-weight: 600; }
.map td.page { min-width: 5.6em; height: 2.9em; padding: 0.45em 0.3em 0.2em; text-align: center;
  white-space: nowrap; vertical-align: middle; border: 3px solid transparent;
  font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.map td.shared { border: 1px dashed #757575; padding: 0.45em 0.4em 0.2em; }
.map td.private { border: 3px solid #000000; }
.map td.touched { box-shadow: inset 0 6px 0 #00838f; }
.map td.notrun { color: var(--muted); background: #ffffff; text-align: left; }
.map .attr { font-weight: 700; }
.map .tags { display: block; font-size: 0.86em; }
.map-note { color: var(--muted); font-size: 0.88em; }
@media print {
  body { font-size: 10.5pt; padding: 0; max-width: none; }
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
  details.run::details-content { content-visibility: visible; display: block; }
  details.run > summary { list-style: none; }
  .map, .matrix, .results { break-inside: avoid; }
  h2, h3, h4 { break-after: avoid; }
  .toc .scenarios { columns: 2; }
  .scroll { overflow: visible; }
  a { color: inherit; text-decoration: none; }
}
@page { margin: 12mm; }
"""


def e(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute (and bidirectional controls and
    line separators, shown as ``\\uXXXX``: a name must not turn the page's text around)."""
    return html.escape(printable(str(value), controls=False), quote=True)


def seen(view: PageView) -> Seen:
    """What a reader of the page sees."""
    if not view.allocated:
        return UNALLOCATED
    for label, shown in SEEN.items():
        if label in view.origins:
            return shown
    return UNKNOWN


def touched(step: Step, npages: int) -> range:
    """The pages a step's range covers, within the file (none for ``launch``)."""
    pages = step.operation.pages
    return range(max(pages.start, 0), min(pages.stop, npages))


def _page_cell(page: int, view: PageView, hit: bool) -> str:
    shown = seen(view)
    attr = "private" if view.private else "shared"
    mixed = len(view.origins) > 1 and view.allocated
    tags = []
    if view.pins:
        tags.append("pin" if view.pins == 1 else f"pin×{view.pins}")
    if view.mapped:
        tags.append("map" if view.mapped == 1 else f"map×{view.mapped}")
    tip = [f"page {page} at {page * PAGE_SIZE:#x}: {attr}", f"a reader sees {shown.words}"]
    if mixed:
        tip.append(f"mixed: {', '.join(view.origins)}")
    elif view.origins:
        tip.append(f"provenance {view.origins[0]}")
    tip.append(f"pinned {view.pins}x" if view.pins else "not pinned")
    tip.append(f"mapped by {view.mapped} host mapping(s)" if view.mapped else "not mapped by the host")
    if hit:
        tip.append("in this step's range")
    classes = f"page {attr}{' touched' if hit else ''}"
    tag_html = f"<span class='tags'>{' '.join(tags)}</span>" if tags else "<span class='tags'>&#160;</span>"
    return (
        f"<td class='{classes}' style='background:{shown.background};color:{shown.text}' "
        f"title='{e('; '.join(tip))}'><span class='attr'>{'P' if view.private else 'S'}</span> "
        f"{e(shown.code)}{'+' if mixed else ''}{tag_html}</td>"
    )


def memory_map(result: RunResult) -> str:
    """The memory map of one run as a table: pages across, steps down."""
    if result.initial is None:
        return "<p class='map-note'>no memory map: the backend does not expose page provenance</p>"
    npages = min(len(result.initial), MAX_PAGES)
    head = "".join(f"<th scope='col'>page {p}<br>{p * PAGE_SIZE:#x}</th>" for p in range(npages))
    rows = [
        "<tr><th scope='row' class='step'>initial state</th>"
        + "".join(_page_cell(p, v, False) for p, v in enumerate(result.initial[:npages]))
        + "</tr>"
    ]
    for s in result.steps[:MAX_STEPS]:
        verdict = {True: ("ok", "ok"), False: ("FAIL", "bad"), None: ("skipped", "skipped")}[s.passed]
        saw = "not run" if s.outcome is None else describe(s.outcome, 8)
        failed = " failed" if s.passed is False else ""
        label = (
            f"<th scope='row' class='step{failed}'>{s.step.index}. {e(s.step.label())}"
            f"<span class='saw'>→ {e(saw)} <span class='{verdict[1]}'>[{verdict[0]}]</span></span></th>"
        )
        hit = set(touched(s.step, npages))
        if s.pages is None:
            cells = f"<td class='notrun' colspan='{npages}'>(not run)</td>"
        else:
            cells = "".join(_page_cell(p, v, p in hit) for p, v in enumerate(s.pages[:npages]))
        rows.append(f"<tr>{label}{cells}</tr>")
    shown = []
    if len(result.initial) > npages:
        shown.append(f"first {npages} of {len(result.initial)} pages shown")
    if len(result.steps) > MAX_STEPS:
        shown.append(f"first {MAX_STEPS} of {len(result.steps)} steps shown")
    note = f"<p class='map-note'>{'; '.join(shown)}</p>" if shown else ""
    caption = f"{e(result.scenario.name)} on {e(result.platform)} ({e(result.abi)}): memory map"
    return (
        f"<div class='scroll'><table class='map' aria-label='{caption}'><thead><tr><th class='step'>step</th>"
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{note}"
    )


def map_legend() -> str:
    items = [*SEEN.values(), UNALLOCATED]
    spans = "".join(
        f"<li><span class='swatch' style='background:{s.background};color:{s.text}'>{e(s.code)}</span>"
        f"{e(s.words)}</li>"
        for s in items
    )
    keys = (
        "<li><span class='swatch' style='border:3px solid #000000'>P</span>private page (thick border)</li>"
        "<li><span class='swatch' style='border:1px dashed #757575'>S</span>shared page (dashed border)</li>"
        "<li><span class='swatch' style='box-shadow: inset 0 6px 0 #00838f'>&#160;</span>"
        "in the range the step touched</li>"
        "<li><span class='swatch'>pin</span>pinned (×n: n pins)</li>"
        "<li><span class='swatch'>map</span>mapped by a host mapping</li>"
        "<li><span class='swatch'>host+</span>+: the page holds bytes of several kinds (tooltip)</li>"
    )
    return f"<ul class='legend' aria-label='memory map legend'>{spans}{keys}</ul>"


def matrix_tables(abi: str, cells: Sequence[Mapping[str, str]]) -> str:
    """docs/semantics.md §2 for one revision: a table per direction, a row per platform and
    phase, a column per policy, each cell coloured by its kind, with the notes' letters."""
    index = {(c["platform"], c["direction"], c["policy"], c["phase"]): c for c in cells}
    names = list(dict.fromkeys(c["platform"] for c in cells))
    out = []
    for direction in Direction:
        reader = "host" if direction is Direction.TO_SHARED else "guest"
        head = "".join(f"<th scope='col'>{e(p.value)}</th>" for p in POLICIES)
        body = []
        for platform in names:
            for phase in PHASES:
                tds = []
                for policy in POLICIES:
                    cell = index.get((platform, direction.value, policy.value, phase.value))
                    if cell is None:
                        tds.append("<td>-</td>")
                        continue
                    kind = cell.get("kind", "guarantee")
                    shown = KINDS[kind].prefix + cell["result"]
                    notes = [n for n in cell["notes"].split(",") if n]
                    marks = "".join(NOTES[n][0] for n in notes)
                    sup = f"<sup class='marks'>{e(marks)}</sup>" if marks else ""
                    tip = f"{KINDS[kind].words}" + "".join(f"; [{NOTES[n][0]}] {NOTES[n][1]}" for n in notes)
                    tds.append(f"<td class='k-{kind}' title='{e(tip)}'>{e(shown)}{sup}</td>")
                body.append(
                    f"<tr><th scope='row'>{e(platform)}</th>"
                    f"<th scope='row'>{e(phase.value.replace('_', '-'))}"
                    f"</th>{''.join(tds)}</tr>"
                )
        out.append(
            f"<h4>{e(direction.arrow)} ({e(direction.value)}): what the {reader} reads next</h4>"
            f"<div class='scroll'><table class='matrix'><thead><tr><th>platform</th><th>phase</th>{head}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )
    return "".join(out)


def matrix_legend(abi_cells: Mapping[str, Sequence[Mapping[str, str]]]) -> str:
    kinds = "".join(
        f"<li><span class='swatch k-{name}'>{e(kind.sample)}</span>{e(kind.words)}</li>"
        for name, kind in KINDS.items()
    )
    used = {n for cells in abi_cells.values() for c in cells for n in c["notes"].split(",") if n}
    notes = "".join(f"<dt>{e(NOTES[n][0])}</dt><dd>{e(NOTES[n][1])}</dd>" for n in NOTES if n in used)
    general = "".join(
        f"<dt>·</dt><dd>{e(text.replace('`', ''))}</dd>" for text in general_notes(list(abi_cells))
    )
    return (
        f"<ul class='legend' aria-label='matrix legend'>{kinds}</ul>"
        f"<dl class='notes' aria-label='matrix notes'>{notes}{general}</dl>"
    )


def _anchor(result: RunResult) -> str:
    return f"run-{result.scenario.name}-{result.platform}-{result.abi}"


def _scenario_anchor(name: str) -> str:
    return f"scenario-{name}"


def _badge(status: str) -> str:
    """A run's verdict: PASS, FAIL, SKIP or N/A (not applicable to the revision)."""
    return f"<span class='verdict {status.replace('/', '')}'>{status.upper()}</span>"


def results_table(results: Sequence[RunResult], platform_names: Sequence[str]) -> str:
    """A row per scenario (and revision, when several), a column per platform."""
    many = len({(r.scenario.name, r.abi) for r in results}) > len({r.scenario.name for r in results})
    grid: dict[tuple[str, str], dict[str, RunResult]] = {}
    for r in results:
        grid.setdefault((r.scenario.name, r.abi if many else ""), {})[r.platform] = r
    head = "<th scope='col'>scenario</th>" + ("<th scope='col'>abi</th>" if many else "")
    head += "".join(f"<th scope='col'>{e(p)}</th>" for p in platform_names)
    rows = []
    for (name, abi), runs in grid.items():
        tds = []
        for p in platform_names:
            run = runs.get(p)
            if run is None:
                tds.append("<td class='none' title='not a platform of this scenario'>–</td>")
                continue
            why = (
                run.not_applicable
                or run.skipped
                or run.error
                or "; ".join(f"step {s.step.index} failed" for s in run.failures)
            )
            tip = f" title='{e(why)}'" if why else ""
            tds.append(f"<td{tip}><a href='#{e(_anchor(run))}'>{_badge(run.status)}</a></td>")
        abi_td = f"<td>{e(abi)}</td>" if many else ""
        rows.append(
            f"<tr><th scope='row'><a href='#{e(_scenario_anchor(name))}'>{e(name)}</a></th>{abi_td}"
            f"{''.join(tds)}</tr>"
        )
    problems = [r for r in results if r.status != "pass"]
    listed = "".join(
        f"<li>{_badge(r.status)} <a href='#{e(_anchor(r))}'>{e(r.scenario.name)} on {e(r.platform)} "
        f"({e(r.abi)})</a>: {e(_why(r))}</li>"
        for r in problems
    )
    return (
        f"<div class='scroll'><table class='results'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        + (f"<h4>Not passed</h4><ul>{listed}</ul>" if listed else "")
    )


def _why(result: RunResult) -> str:
    if result.not_applicable:
        return f"not applicable to {result.abi}: {result.not_applicable}"
    return result.skipped or result.error or "; ".join(_failure(s) for s in result.failures)


def _failure(step: StepResult) -> str:
    saw = "not run" if step.outcome is None else describe(step.outcome)
    expected = " or ".join(map(str, step.expect))
    return f"step {step.step.index} {step.step.label()}: expected {expected}, saw {saw}"


def _counts(results: Sequence[RunResult]) -> str:
    n = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip", "n/a")}
    parts = [
        f"<span class='verdict pass'>{n['pass']} passed</span>",
        f"<span class='verdict fail'>{n['fail']} failed</span>" if n["fail"] else "0 failed",
        f"<span class='verdict skip'>{n['skip']} skipped</span>" if n["skip"] else "0 skipped",
    ]
    if n["n/a"]:
        parts.append(f"<span class='verdict na'>{n['n/a']} not applicable</span>")
    return f"<p class='counts'>{len(results)} runs: {', '.join(parts)}.</p>"


def render(
    results: Sequence[RunResult],
    matrices: Mapping[str, Sequence[Mapping[str, str]]],
    *,
    revision: str,
    backend: str = "model",
    title: str = "guestmem report",
    generated: datetime | None = None,
) -> str:
    """The whole report as one HTML document. ``matrices`` maps each revision shown to its
    computed cells; ``revision`` says which revision the runs used, in words."""
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    run_platforms = [p for p in known_platforms.PLATFORMS if any(r.platform == p for r in results)]
    run_platforms += sorted({r.platform for r in results} - set(run_platforms))
    by_scenario: dict[str, list[RunResult]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario.name, []).append(r)
    toc_scenarios = "".join(
        f"<li><a href='#{e(_scenario_anchor(name))}'>{e(name)}</a>"
        f"{' ' + _badge('fail') if any(r.status == 'fail' for r in runs) else ''}</li>"
        for name, runs in by_scenario.items()
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{e(title)}</h1><dl class='meta'>"
        f"<dt>version</dt><dd>guestmem {e(__version__)}</dd>"
        f"<dt>generated</dt><dd>{e(when)}</dd>"
        f"<dt>backend</dt><dd>{e(backend)}</dd>"
        f"<dt>revision</dt><dd>{e(revision)}</dd>"
        f"<dt>platforms</dt><dd>{e(', '.join(run_platforms))}</dd>"
        f"</dl>{_counts(results)}</header>",
        "<nav class='toc' aria-label='contents'><h2 id='contents'>Contents</h2><ol>"
        "<li><a href='#matrix'>Conversion matrix</a></li>"
        "<li><a href='#results'>Suite results</a></li>"
        f"<li><a href='#maps'>Memory maps</a><ol class='scenarios'>{toc_scenarios}</ol></li>"
        "</ol></nav>",
        "<section><h2 id='matrix'>Conversion matrix</h2>",
        "<p>docs/semantics.md §2, every cell measured on the model: what the next reader sees on an "
        "allocated page after a successful conversion, or the conversion's errno.</p>",
    ]
    if matrices:
        parts.append(matrix_legend(matrices))
        for abi, cells in matrices.items():
            parts.append(f"<h3 id='matrix-{e(abi)}'>revision {e(abi)}</h3>{matrix_tables(abi, cells)}")
    else:
        parts.append("<p class='map-note'>no revision chosen: no matrix</p>")
    parts += [
        "</section><section><h2 id='results'>Suite results</h2>",
        "<p>A row per scenario, a column per platform; each verdict links to the run's memory map.</p>",
        results_table(results, run_platforms),
        "</section><section><h2 id='maps'>Memory maps</h2>",
        "<p>Pages across, steps down: after each step, every page's attribute and what a reader "
        "would see there. Hover a page for its full description. Maps of the review's examples "
        "and of every failure are open; click a run to open the others (all are printed).</p>",
        map_legend(),
    ]
    for name, runs in by_scenario.items():
        parts.append(
            f"<h3 id='{e(_scenario_anchor(name))}'>{e(name)}</h3>"
            f"<p class='about'>{e(runs[0].scenario.about.strip())}</p>"
        )
        parts.append("<div class='runs'>")
        for r in runs:
            open_ = " open" if r.status == "fail" or name.startswith(OPEN_PREFIX) else ""
            parts.append(
                f"<details class='run' id='{e(_anchor(r))}'{open_}><summary>{e(r.platform)} ({e(r.abi)}) "
                f"{_badge(r.status)}</summary>{memory_map(r)}</details>"
            )
        parts.append("</div>")
    parts.append("</section></body></html>")
    return "\n".join(parts)
