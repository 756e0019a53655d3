"""MkDocs hook for the docs site (mkdocs.yml: ``hooks``).

Docstrings in anchor_interp use Sphinx roles (``:func:`train_many```); mkdocstrings renders them as
the literal role followed by inline code. Drop the role so that only the code remains.
"""

from __future__ import annotations

import re

SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc):(?=<code>)")


def on_page_content(html: str, **kwargs) -> str:
    return SPHINX_ROLE.sub("", html)
