"""``guestmem report``: one self-contained HTML file, looked at in headless Chromium the way
a person looks at it (layout boxes, computed colours, print media), not as a string."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import Browser
from guestmem.cli import main
from guestmem.cli.run import load_all
from guestmem.report import html
from guestmem.report.matrix import KINDS
from guestmem.scenario import suite_dir, suite_files
from guestmem.scenario.runner import run_all
from guestmem.spec import revisions

EVIL = """\
name = "evil <script>document.title='pwned'</script> & \\"q\\""
about = "<img src=x onerror=\\"document.title='pwned'\\"> about </svg><p id='injected'>"
platforms = ["sw_protected", "snp"]
pages = 2
init = "shared"

[[step]]
op = "host_write"
offset = 0
data = "41"
repeat = 8192

[[step]]
op = "convert"
offset = 0
size = "8K"
to = "private"
policy = "none"

[[step]]
op = "launch"

[[step]]
op = "guest_read"
offset = 0
size = 4
expect = { sw_protected = "fill:ab", snp = "not:41414141" }
"""

#: A run that fails (its conversion is refused with an error_offset the file does not
#: expect), with a pin and a host mapping to draw, and a long step label.
FAILING = """\
name = "failing_pinned"
platforms = ["sw_protected"]
pages = 3
init = "shared"

[[step]]
op = "host_write"
offset = 0x1000
data = "beef"

[[step]]
op = "pin"
offset = 0x1000
size = "4K"

[[step]]
op = "convert"
offset = 0
size = "12K"
to = "private"
policy = "preserve"
expect = "ok"
"""

#: What the page reports about itself: every memory-map table (visible or not), every
#: piece of text that spills out of its table cell or legend swatch, and every text whose
#: contrast against its background is below WCAG AA (4.5, or 3 for large text).
#: Screenshots and the printed PDF stay here for a person to look at (``/build/`` is ignored).
ARTIFACTS = Path(
    os.environ.get("GUESTMEM_ARTIFACTS", Path(__file__).parent.parent / "build" / "test-artifacts")
)
MEASURE = (Path(__file__).parent / "report_measure.js").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chrome = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chrome
    finally:
        chrome.close()


@pytest.fixture(scope="module")
def suite_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in suite's report, as the README tells a reader to make it."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def suite_runs() -> int:
    """How many runs the built-in suite has (every one gets a map)."""
    return len(run_all(load_all([str(p) for p in suite_files()]), platform="all"))


@pytest.fixture(scope="module")
def small_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hostile names, a failure with a pin, and the payload example under every revision."""
    where = tmp_path_factory.mktemp("small")
    (where / "evil.toml").write_text(EVIL)
    (where / "failing.toml").write_text(FAILING)
    out = where / "report.html"
    files = [
        str(where / "evil.toml"),
        str(where / "failing.toml"),
        str(suite_dir() / "selftest_unallocated_folios.toml"),  # one map per test_page
        str(suite_dir() / "review_payload_injection.toml"),
    ]
    assert main(["report", "--out", str(out), *files]) == 1  # failing_pinned fails
    return out


def measure(browser: Browser, page: Path, media: str = "screen") -> dict[str, Any]:
    browser.open(page.as_uri())
    browser.media(media)
    measured: dict[str, Any] = json.loads(browser.evaluate(MEASURE))
    return measured


def test_report_is_self_contained_and_escaped(small_report: Path) -> None:
    text = small_report.read_text()
    assert "<script" not in text.lower()
    assert "<img" not in text and "id='injected'" not in text
    assert "evil &lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt; &amp; &quot;q&quot;" in text
    assert not re.search(r"(src|href)=['\"](https?:|//)", text), "no external resources"


def test_rendered_report_on_screen(
    browser: Browser, suite_report: Path, suite_runs: int, artifacts: Path
) -> None:
    measured = measure(browser, suite_report)
    maps = measured["maps"]
    assert len(maps) == suite_runs > 100  # a map per run of the built-in suite
    shown = [m for m in maps if m["visible"]]
    review = [m for m in maps if m["label"].startswith("review_")]
    assert review and all(m["visible"] and m["open"] for m in review), "the review's examples are open"
    assert all(m["width"] > 150 and m["height"] > 60 for m in shown)
    assert len(shown) == len(review), "the other maps are one click away, not in the way"
    assert measured["cells"] > 800
    assert measured["overflow"] == [], measured["overflow"][:5]
    assert measured["checked"] > 500
    assert measured["contrast"] == [], measured["contrast"][:5]
    shot = artifacts / "report.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 100_000
    print(f"screenshot: {shot}")


def test_rendered_report_in_print(
    browser: Browser, suite_report: Path, suite_runs: int, artifacts: Path
) -> None:
    measured = measure(browser, suite_report, "print")
    assert len(measured["maps"]) == suite_runs
    hidden = [m["label"] for m in measured["maps"] if not m["visible"]]
    assert hidden == [], "every map prints, open or not"
    assert measured["overflow"] == [], measured["overflow"][:5]
    assert measured["contrast"] == [], measured["contrast"][:5]
    pdf = artifacts / "report.pdf"
    browser.pdf(pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_rendered_small_report(browser: Browser, small_report: Path, artifacts: Path) -> None:
    measured = measure(browser, small_report)
    title = browser.evaluate("document.title")
    assert title == "guestmem report"  # no script of the scenario ran
    assert browser.evaluate("document.querySelector('img, #injected, script') === null")
    failing = [m for m in measured["maps"] if m["label"].startswith("failing_pinned")]
    assert len(failing) == 1 and failing[0]["visible"] and failing[0]["open"], "a failure's map is open"
    assert measured["overflow"] == [], measured["overflow"][:5]
    assert measured["contrast"] == [], measured["contrast"][:5]
    # the failing step's label is complete, with its errno and error_offset
    label = browser.evaluate(
        "[...document.querySelectorAll('.map .step.failed')].map(e => e.innerText).join('|')"
    )
    assert "3. convert 0x0+0x3000 to private (preserve)" in label
    assert "EAGAIN (error_offset=0x1000)" in label and "[FAIL]" in label
    # the pin and the host mapping are drawn on page 1, and the touched range is marked
    cells = browser.evaluate(
        "[...document.querySelector('table[aria-label^=\"failing_pinned\"]').rows].map("
        "r => [...r.querySelectorAll('td.page')]"
        ".map(c => [c.innerText.replace(/\\s+/g, ' ').trim(), c.className]))"
    )
    pin_row, convert_row = cells[3], cells[4]  # after the head row, the initial state, host_write
    assert "pin" in pin_row[1][0] and "map" in pin_row[1][0], pin_row
    assert "touched" in pin_row[1][1] and "touched" not in pin_row[0][1], "pin touched page 1 only"
    assert all("touched" in c[1] for c in convert_row), "convert touched every page"
    shot = artifacts / "report-failing.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 10_000


def test_colours_pass_wcag_aa_and_differ_in_lightness() -> None:
    def luminance(colour: str) -> float:
        def channel(v: int) -> float:
            c = v / 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)

    seen = [*html.SEEN.values(), html.UNALLOCATED]
    for s in seen:
        a, b = sorted((luminance(s.background), luminance(s.text)))
        assert (b + 0.05) / (a + 0.05) >= 4.5, s
    # kinds of host data (host, accepted, payload) are told apart by lightness, not hue alone
    blues = sorted(luminance(html.SEEN[k].background) for k in ("host", "accepted", "payload"))
    assert blues[1] - blues[0] > 0.15 and blues[2] - blues[1] > 0.15


def test_matrix_is_coloured_by_kind(small_report: Path) -> None:
    text = small_report.read_text()
    # semantics.md §2: sw_protected NONE fills with 0xab, SNP S→P ZERO is unsupported,
    # TDX S→P PRESERVE works only before launch, NONE on TDX is the native effect
    assert re.search(r"<td class='k-guarantee'[^>]*>fill:ab", text)
    assert re.search(r"<td class='k-unsupported'[^>]*>EOPNOTSUPP", text)
    assert re.search(r"<td class='k-prelaunch'[^>]*>pre-launch only: preserved", text)
    assert re.search(r"<td class='k-native'[^>]*>native: zeros", text)
    for kind in KINDS.values():
        assert html.e(kind.words) in text, "the legend explains every kind"


def test_report_header_and_contents(small_report: Path) -> None:
    text = small_report.read_text()
    for key in ("version", "generated", "backend", "revision", "platforms"):
        assert f"<dt>{key}</dt>" in text
    assert (
        "<nav class='toc'" in text and "href='#matrix'" in text and "href='#scenario-failing_pinned'" in text
    )
    assert "<span class='verdict fail'>1 failed</span>" in text


def test_report_all_revisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    scenario = str(suite_dir() / "review_payload_injection.toml")
    assert main(["report", "--out", str(out), "--abi", "all", "--format", "json", scenario]) in (0, 1)
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "guestmem.report/1" and doc["revisions"] == list(revisions.REVISIONS)
    text = out.read_text()
    for abi in doc["revisions"]:
        assert f"id='matrix-{abi}'" in text
    assert doc["runs"] == len(revisions.REVISIONS) * len(
        re.findall(r"<details class='run' id='run-review_payload_injection-[a-z_]+-seed'", text)
    )


def test_report_bad_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
