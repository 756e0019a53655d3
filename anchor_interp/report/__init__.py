"""Reports: a FindHeadsResult -> one self-contained offline HTML file + PNG figures beside it.

    html.py     FindHeadsResult -> HTML (circuitsvis bundle inlined once; numbers from the result alone)
    diagram.py  result -> the circuit diagram (inline SVG, also saved as SVG and PNG)
    cards.py    result -> the model card and the per-head evidence cards (mean attention as inline SVG)
    plots.py    FindHeadsResult -> matplotlib figures (PNG; patching heatmaps and mean attention also SVG)
    browser.py  headless Chromium: DOM dump and screenshots, for tests and docs

Reading the report: docs/report.md. Importing this package is cheap (no torch, no matplotlib).
"""

from anchor_interp.report.browser import (
    CHROMIUM_INSTALL_HINT,
    OFFLINE_FLAGS,
    dump_dom,
    find_browser,
    screenshot,
)
from anchor_interp.report.html import (
    BUNDLE_MARKER,
    circuitsvis_bundle,
    json_for_script,
    render_html,
    report_paths,
    write_report,
)

__all__ = [
    "BUNDLE_MARKER",
    "CHROMIUM_INSTALL_HINT",
    "OFFLINE_FLAGS",
    "circuitsvis_bundle",
    "dump_dom",
    "find_browser",
    "json_for_script",
    "render_html",
    "report_paths",
    "screenshot",
    "write_report",
]
