"""Sphinx configuration of the bort_jax documentation.

Build (offline, warnings as errors, as ``.ci/run`` does)::

  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import pathlib
import sys

_DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_DOCS))
sys.path.insert(0, str(_DOCS.parent))

import apigen  # pylint: disable=g-import-not-at-top,wrong-import-position
import bort_jax  # pylint: disable=g-import-not-at-top,wrong-import-position

project = "bort_jax"
author = "bort_jax authors"
copyright = "2026, bort_jax authors"  # pylint: disable=redefined-builtin
release = bort_jax.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
# No intersphinx: the build must not reach the network.

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# results/ holds frontier data (runs, tables) that the result pages cite.
exclude_patterns = ["_build", "results"]
root_doc = "index"

# The API pages are generated from each public module's __all__ before the
# sources are read, so a new public name needs no edit here.
apigen.write_pages(_DOCS)

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autosummary_generate = False  # apigen writes the pages
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# NamedTuple fields are documented by their class's "Attributes:" section;
# as :ivar: they do not collide with autodoc's entries for the fields.
napoleon_use_ivar = True

# The result pages are included as written; ACCURACY_STUDY.md steps from
# "##" to "####", which MyST reports and HTML renders fine.
suppress_warnings = ["myst.header"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = f"bort_jax {release}"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
html_static_path = []
