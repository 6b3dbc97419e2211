"""Sphinx configuration of the openmm_cmt documentation (``make docs``)."""

import os
import sys

# The tree being documented wins over an installed copy.
sys.path.insert(0, os.path.abspath(".."))

import openmm_cmt  # noqa: E402  (imports torch before openmm, as every user must)

project = "openmm_cmt"
author = "openmm_cmt developers"
copyright = "2026, openmm_cmt developers"
release = version = openmm_cmt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # numpydoc comes first, so it renders the numpydoc sections (``Parameters``,
    # ``Returns``, ...) before napoleon sees a docstring.
    "numpydoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # signatures carry the annotations; descriptions stay prose
autodoc_default_options = {"members": True}
autosummary_generate = False

numpydoc_show_class_members = False  # autodoc's :members: lists them, once
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# Docstrings use numpydoc sections only (tests/test_docstrings.py rejects ``Args:``-style
# ones), so napoleon's Google parsing is off: it would otherwise read a lone line such as
# ``Example:`` in running text as a section header.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # dataclass fields are documented by autodoc already
napoleon_use_rtype = False

myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"openmm_cmt {release}"
html_static_path = []


def _join_name_lists(app, what, name, obj, options, lines):
    """Docstrings describe related names together (``lam, eta: ...``); napoleon turns that
    into ``:ivar lam, eta:``, which Sphinx would read as type ``lam,`` and name ``eta``."""
    for i, line in enumerate(lines):
        head, sep, rest = line.partition(":")
        if not sep or head.strip() or not rest.startswith(("ivar ", "param ")):
            continue
        field, colon, text = rest.partition(":")
        if colon and ", " in field:
            kind, names = field.split(" ", 1)
            lines[i] = f"{head}:{kind} {names.replace(', ', ',')}:{text}"


def setup(app):
    app.connect("autodoc-process-docstring", _join_name_lists, priority=900)
