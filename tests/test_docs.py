"""The documentation cannot rot: its Python snippets run, its printed outputs are real, the site builds.

- ``TESTED_PAGES``: docs pages whose ```python blocks are executed, each with the number of blocks it
  must have (so that an extraction that silently finds nothing fails). The blocks of one page run in
  order in one namespace, in a fresh temporary working folder. Every page with ```python blocks
  must be listed (non-runnable code goes in ```text blocks).
- A ```text block right after the HTML comment ``<!-- printed -->`` shows output: every non-empty line
  of it must appear among the lines the page's snippets printed.
- ``mkdocs build --strict`` (the venv's mkdocs, ``sys.executable -m mkdocs``) into a temporary folder
  must succeed without a single warning (broken links, missing pages, pages left out of the nav,
  docstrings mkdocstrings cannot parse).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# page (relative to docs/) -> number of ```python blocks it must contain
TESTED_PAGES = {
    "quickstart.md": 1,
    "tutorial.md": 9,
    "extending.md": 4,
    "tasks.md": 1,
    "patching.md": 1,
    "your_model.md": 3,
}

FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PRINTED_MARK = "<!-- printed -->"


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """Every top-level fenced block of a markdown page: (info string, body, start offset)."""
    return [(m["info"].strip(), m["body"], m.start()) for m in FENCE.finditer(text)]


def python_snippets(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block, in page order."""
    return [(text.count("\n", 0, start) + 2, body) for info, body, start in fenced_blocks(text)
            if info.split()[:1] == ["python"]]


def printed_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number, non-empty lines) of every ```text block marked with PRINTED_MARK."""
    out = []
    for info, body, start in fenced_blocks(text):
        if info.split()[:1] == ["text"] and text[:start].rstrip().endswith(PRINTED_MARK):
            out.append((text.count("\n", 0, start) + 2, [ln.rstrip() for ln in body.splitlines() if ln.strip()]))
    return out


def test_extraction_finds_blocks_and_marks():
    page = "intro\n\n```python\nx = 1\n```\n\n<!-- printed -->\n\n```text\n1\n```\n\n```bash\nls\n```\n```py\ny\n```\n"
    assert [code for _, code in python_snippets(page)] == ["x = 1\n"]
    assert printed_blocks(page) == [(10, ["1"])]
    assert python_snippets("no code here") == []


def test_every_python_like_block_is_tested():
    """A ```py / ```pycon block would be skipped silently by the extraction: only ```python is allowed."""
    for page in sorted(DOCS.rglob("*.md")):
        infos = [info for info, _, _ in fenced_blocks(page.read_text())]
        odd = [i for i in infos if i.split()[:1] in (["py"], ["pycon"], ["python3"], ["Python"])]
        assert not odd, f"{page.relative_to(REPO)}: use ```python for Python code, not {odd}"


def test_every_page_with_python_is_tested():
    """Python blocks are promises that the code runs: a page that has them must be in TESTED_PAGES."""
    untested = [str(page.relative_to(DOCS)) for page in sorted(DOCS.glob("**/*.md"))
                if python_snippets(page.read_text()) and str(page.relative_to(DOCS)) not in TESTED_PAGES]
    assert not untested, (
        f"{untested} contain ```python blocks but are not in TESTED_PAGES (tests/test_docs.py): add them "
        "with their block count, or mark code that is not meant to run as ```text"
    )


@pytest.mark.parametrize("page", sorted(TESTED_PAGES))
def test_page_snippets_run(page, tmp_path, monkeypatch):
    import torch

    text = (DOCS / page).read_text()
    snippets = python_snippets(text)
    print(f"{page}: {len(snippets)} python snippets")
    assert len(snippets) == TESTED_PAGES[page], (
        f"{page} has {len(snippets)} ```python blocks, expected {TESTED_PAGES[page]}: "
        "update TESTED_PAGES in tests/test_docs.py if the page changed on purpose"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    namespace: dict = {"__name__": f"docs_{Path(page).stem}"}
    printed = io.StringIO()
    threads = torch.get_num_threads()
    try:
        for ran, (line, code) in enumerate(snippets):
            with contextlib.redirect_stdout(printed):
                try:
                    exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)
                except Exception as e:
                    raise AssertionError(
                        f"docs/{page}: snippet {ran + 1} of {len(snippets)} (line {line}) failed: {e!r}\n"
                        f"--- output so far ---\n{printed.getvalue()[-3000:]}"
                    ) from e
    finally:
        torch.set_num_threads(threads)
        torch.set_printoptions(profile="default")
    print(f"{page}: ran {len(snippets)} snippets")
    marks = len(re.findall(rf"^{re.escape(PRINTED_MARK)}[ \t]*$", text, flags=re.MULTILINE))
    assert marks == len(printed_blocks(text)), f"docs/{page}: every {PRINTED_MARK} line must precede a ```text block"
    out_lines = {ln.rstrip() for ln in printed.getvalue().splitlines()}
    for line, expected in printed_blocks(text):
        missing = [ln for ln in expected if ln not in out_lines]
        assert not missing, (
            f"docs/{page}: the printed output shown at line {line} is not what the snippets print; "
            f"lines not printed: {missing[:5]}\n--- printed ---\n{printed.getvalue()[-3000:]}"
        )


def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = proc.stdout + proc.stderr
    problems = [ln for ln in log.splitlines() if re.search(r"\b(WARNING|ERROR)\b", ln)]
    assert proc.returncode == 0 and not problems, "mkdocs build --strict failed:\n" + "\n".join(problems or [log[-3000:]])
    assert (tmp_path / "site" / "tutorial" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "labels" / "index.html").read_text()
    assert "anchor_interp.labels.label_heads" in api  # mkdocstrings rendered the docstrings


def test_commands_to_type_name_the_venv_script():
    """`anchor-find-heads` is installed in .venv/bin (make demo): a command with options names that path, so it
    runs without an activated venv (#14 item 10)."""
    bare = re.compile(r"(?<![\w/.-])anchor-find-heads\s+--")
    found = [f"{page.name}:{i}" for page in [*sorted(DOCS.glob("*.md")), REPO / "README.md"]
             for i, line in enumerate(page.read_text().splitlines(), 1) if bare.search(line)]
    assert not found, f"write .venv/bin/anchor-find-heads in {found}"
