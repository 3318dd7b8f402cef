"""Every ```python block of README.md runs, in order, in one namespace.

Blocks build on each other as a reader would read them (the second block uses
the first one's imports), so they share one namespace. A block may be left out
only with the line ``<!-- readme-test: skip REASON -->`` right before its
opening fence, and the reason must be given.
"""

import pathlib
import re
import warnings

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"

_BLOCK = re.compile(
    r"(?P<marker><!-- readme-test: skip(?P<reason>[^>]*)-->\s*\n)?"
    r"^```python\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE)


def readme_blocks(text: str) -> list[tuple[int, str, str | None]]:
  """``(line, code, skip_reason)`` of every ```python block of ``text``."""
  blocks = []
  for match in _BLOCK.finditer(text):
    line = text.count("\n", 0, match.start("code")) + 1
    reason = None
    if match.group("marker") is not None:
      reason = match.group("reason").strip()
      if not reason:
        raise ValueError(f"README.md:{line}: a skipped block needs a reason.")
    blocks.append((line, match.group("code"), reason))
  return blocks


def test_readme_blocks_are_found_and_a_skip_needs_a_reason():
  text = ("```python\na = 1\n```\n<!-- readme-test: skip needs a GPU -->\n"
          "```python\nb = 2\n```\n```bash\nls\n```\n")
  assert readme_blocks(text) == [(2, "a = 1\n", None),
                                 (6, "b = 2\n", "needs a GPU")]
  with pytest.raises(ValueError, match="needs a reason"):
    readme_blocks("<!-- readme-test: skip -->\n```python\nc = 3\n```\n")


@pytest.mark.slow  # about 6 s of CPU: first use of Flax, optax and JAX ops
def test_every_readme_python_block_runs():
  blocks = readme_blocks(README.read_text(encoding="utf-8"))
  assert len(blocks) >= 2, "README.md lost its Python examples"
  namespace = {"__name__": "readme"}
  ran = 0
  for line, code, reason in blocks:
    if reason is not None:
      continue
    # An example that warns (e.g. a weight Bort does not reach) is a bad
    # example: the README must show clean use.
    with warnings.catch_warnings():
      warnings.simplefilter("error", UserWarning)
      exec(compile(code, f"README.md:{line}", "exec"), namespace)  # pylint: disable=exec-used
    ran += 1
  assert ran >= 2
