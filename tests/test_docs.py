"""The documentation: every guide's code runs and prints what the page says,
and the API reference has a page for every public name."""

import contextlib
import importlib.util
import io
import pathlib
import re
import warnings

import pytest

import bort_jax

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
GUIDES = sorted((DOCS / "guides").glob("*.md"))

# A fenced block: ```python or ```text, up to the closing fence.
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)



def _load_apigen():
  spec = importlib.util.spec_from_file_location("apigen", DOCS / "apigen.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def code_blocks(text: str) -> list[tuple[str, str | None]]:
  """Each ```python block with the ```text block right after it (its
  printed output, as the page states it), or None."""
  blocks = [(m.group(1), m.group(2), m.start(), m.end())
            for m in _FENCE.finditer(text)]
  out = []
  for i, (lang, body, _, end) in enumerate(blocks):
    if lang != "python":
      continue
    expected = None
    if i + 1 < len(blocks):
      next_lang, next_body, next_start, _ = blocks[i + 1]
      between = text[end:next_start].strip()
      if next_lang == "text" and between in ("", "It prints", "It prints:"):
        expected = next_body
    out.append((body, expected))
  return out


def test_code_blocks_pairs_python_with_its_output():
  text = ("```python\nprint(1)\n```\n\nIt prints\n\n```text\n1\n```\n\n"
          "Prose.\n\n```python\nx = 2\n```\n\nProse.\n\n```text\nno\n```\n")
  assert code_blocks(text) == [("print(1)\n", "1\n"), ("x = 2\n", None)]


def test_every_guide_has_code():
  assert GUIDES, "no guides found under docs/guides"
  for page in GUIDES:
    assert code_blocks(page.read_text()), f"{page.name} has no python block"


# Every guide trains a model or runs the CLI: more than a few seconds each.
@pytest.mark.slow
@pytest.mark.parametrize("page", GUIDES, ids=[p.stem for p in GUIDES])
def test_guide_code_runs_and_prints_what_the_page_states(page, tmp_path,
                                                         monkeypatch):
  # Blocks of one page share a namespace, in order, as a reader runs them;
  # the CLI guide writes run folders, so each page runs in a fresh folder.
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": f"guide_{page.stem}"}
  for i, (body, expected) in enumerate(code_blocks(page.read_text())):
    printed = io.StringIO()
    # A reader copies this code: it must not set off the library's warnings
    # (the Linen guide's gamma was above MAX_STEP_STRENGTH, and warned).
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
      warnings.simplefilter("error", UserWarning)
      exec(compile(body, f"{page.name}, block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
    if expected is not None:
      assert printed.getvalue().strip() == expected.strip(), (
          f"{page.name}, block {i + 1} printed something else than the page "
          "says")


def test_api_pages_cover_every_public_name():
  apigen = _load_apigen()
  pages = apigen.pages()
  for name in bort_jax.__all__:
    page = pages.get(f"api/bort_jax/{name}.rst")
    assert page is not None, f"no API page for bort_jax.{name}"
    assert f":: bort_jax.{name}\n" in page
    assert f"   {name}\n" in pages["api/bort_jax.rst"]  # in the module table
  for module_name in ("bort_jax.dbort", "bort_jax.explain", "bort_jax.models"):
    module = importlib.import_module(module_name)
    table = pages[f"api/{module_name}.rst"]
    for name in module.__all__:
      own = pages.get(f"api/{module_name}/{name}.rst")
      assert own is not None or f"~bort_jax.{name}\n" in table, (
          f"{module_name}.{name} has neither a page nor a top-level one")


def test_api_pages_exclude_the_application():
  apigen = _load_apigen()
  assert "bort_jax.experiments" not in apigen.public_modules()
  assert not any("experiments" in path for path in apigen.pages())


def test_api_pages_leave_files_they_did_not_write(tmp_path):
  apigen = _load_apigen()
  mine = tmp_path / "api" / "notes.rst"
  mine.parent.mkdir()
  mine.write_text("my notes\n")
  stale = tmp_path / "api" / "bort_jax" / "removed_name.rst"
  stale.parent.mkdir()
  stale.write_text(apigen.GENERATED + "\n")
  written = apigen.write_pages(tmp_path)
  assert mine.read_text() == "my notes\n"  # not generated: kept
  assert not stale.exists()  # generated for a name that is gone: removed
  assert "api/bort_jax/bort_adamw.rst" in written
  foreign = tmp_path / "api" / "bort_jax" / "bort_sgd.rst"
  foreign.write_text("hand-written\n")
  with pytest.raises(FileExistsError, match="not generated"):
    apigen.write_pages(tmp_path)
  assert foreign.read_text() == "hand-written\n"
