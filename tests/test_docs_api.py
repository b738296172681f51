"""docs/api.md runs: its ```python blocks, in order, in one namespace, in a fresh folder (each a test step)."""
import re

from tests.conftest import REPO

API_DOC = REPO / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_python_blocks_are_found_by_hand():
    text = "a\n```python\nx = 1\n```\n\n```sh\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\nz = 3\n"]


def test_the_api_page_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(API_DOC.read_text())
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FS_STORE", raising=False)
    monkeypatch.delenv("FS_RUNS", raising=False)
    namespace: dict = {"__name__": "api_doc"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{API_DOC.name}[block {i + 1}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/api.md block {i + 1} failed: {type(e).__name__}: {e}\n{block}") from e
