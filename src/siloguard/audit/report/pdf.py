"""The report as PDF: the HTML page printed by headless Chromium (its print stylesheet applies).

Chromium is the one renderer that prints this page exactly as a browser shows it, plots and
all, with no network; a Python HTML-to-PDF library (WeasyPrint) would need its own system
libraries and renders CSS differently. ``siloguard audit report --pdf`` uses it when Chromium
is installed (Debian: ``apt-get install chromium``) and says how to get it when not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from siloguard._files import write_atomic
from siloguard.errors import AuditError

__all__ = ["chromium", "print_pdf"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    """The browser to print with: ``SILOGUARD_CHROMIUM``, else the first of the usual names on PATH."""
    chosen = os.environ.get("SILOGUARD_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    return next((found for name in _NAMES if (found := shutil.which(name))), None)


def print_pdf(html_path: Path, pdf_path: Path, *, timeout: float = 120) -> Path:
    """Print ``html_path`` to ``pdf_path`` (replaced atomically); AuditError with the fix on failure."""
    browser = chromium()
    if browser is None:
        raise AuditError("--pdf needs Chromium to print the report (Debian: apt-get install chromium; or set "
                         "SILOGUARD_CHROMIUM to a Chrome/Chromium binary); the HTML report was written and prints from any browser")
    pdf_path = Path(pdf_path)
    with tempfile.TemporaryDirectory(prefix="siloguard-pdf-") as scratch:
        partial = Path(scratch) / "report.pdf"
        try:
            done = subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--no-pdf-header-footer", f"--user-data-dir={scratch}/profile",
                 f"--print-to-pdf={partial}", Path(html_path).resolve().as_uri()],
                capture_output=True, text=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            raise AuditError(f"Chromium did not finish printing the report in {timeout:.0f} s; the HTML report was written") from None
        if not partial.is_file() or partial.read_bytes()[:5] != b"%PDF-":
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise AuditError(f"Chromium could not print the report (exit {done.returncode}: {last}); the HTML report was written")
        write_atomic(pdf_path, partial.read_bytes())
    return pdf_path
