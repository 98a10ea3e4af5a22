"""``guestmem report``: one self-contained HTML file, rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from guestmem.cli import main
from guestmem.scenario import suite_dir

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


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (scripts/test installs it as root with apt-get)")
    return found


def headless(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.fixture
def report(tmp_path: Path) -> Path:
    scenario = tmp_path / "evil.toml"
    scenario.write_text(EVIL)
    out = tmp_path / "report.html"
    files = [str(scenario), str(suite_dir() / "selftest_unallocated_folios_page1.toml")]
    assert main(["report", "--out", str(out), *files]) == 0
    return out


def test_report_is_self_contained_and_escaped(report: Path) -> None:
    text = report.read_text()
    assert "<script" not in text.lower()
    assert "<img" not in text and "id='injected'" not in text
    assert "evil &lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt; &amp; &quot;q&quot;" in text
    assert not re.search(r"(src|href)=['\"](https?:|//)", text), "no external resources"
    assert text.count("<svg") == 3  # evil on two platforms, unallocated_folios on one


def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    done = headless(tmp_path, "--dump-dom", report.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<title>guestmem report</title>" in dom  # no script changed it
    assert "pwned'</script>" not in dom and "<img" not in dom and 'id="injected"' not in dom
    assert dom.count("<svg") == 3
    assert "Conversion matrix" in dom and "Suite results" in dom
    # the memory map tells what the readers saw: the 0xab fill on sw_protected, garbage on SNP
    assert "reader sees fill 0xab" in dom and "reader sees garbage" in dom
    assert "reader sees zeros (unallocated)" in dom
    png = tmp_path / "shot.png"
    shot = headless(tmp_path, f"--screenshot={png}", "--window-size=1200,1600", report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_matrix_cells(report: Path) -> None:
    text = report.read_text()
    # semantics.md §2: sw_protected NONE fills with 0xab, SNP S→P ZERO is unsupported
    row = re.search(r"<tr><th>sw_protected</th><th>running</th>(.*?)</tr>", text)
    assert row is not None and "fill:ab" in row.group(1)
    snp = re.search(r"<tr><th>snp</th><th>running</th>(.*?)</tr>", text)
    assert snp is not None and "EOPNOTSUPP" in snp.group(1)


def test_report_bad_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
