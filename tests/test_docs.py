"""The repo's own docs: every ```python block of docs/python-api.md runs, as written, against tiny artifacts placed
at the paths it names; the README links the docs and nothing outside the repo."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "python-api.md"
ARTIFACTS = {"news": "classify", "ner": "ner", "qa": "qa", "embed": "embed"}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture()
def artifacts_here(tiny_artifact, tmp_path, monkeypatch):
    (tmp_path / "artifacts").mkdir()
    for name, task in ARTIFACTS.items():
        (tmp_path / "artifacts" / name).symlink_to(tiny_artifact(task), target_is_directory=True)
    monkeypatch.chdir(tmp_path)


def test_every_python_example_of_the_api_page_runs(artifacts_here):
    blocks = python_blocks(API)
    assert len(blocks) == 10, "examples were added or lost: update this count with them"
    for i, code in enumerate(blocks):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{API.name} block {i + 1}", "exec"), {"__name__": f"docs_block_{i + 1}"})
        if i == 0:  # the one example that shows printed output in a comment
            assert out.getvalue() == "Runtime('artifacts/news', task='classify', device='cpu', backend='onnxruntime')\n"


def test_an_example_that_breaks_fails_the_test(artifacts_here):
    broken = python_blocks(API)[2].replace('"label", "score", "scores"', '"label", "score"')
    with pytest.raises(AssertionError):
        exec(compile(broken, "broken", "exec"), {})


def test_the_readme_links_the_repo_docs_and_nothing_outside_the_repo():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/architecture.md", "docs/python-api.md"):
        assert f"({page})" in readme and (ROOT / page).is_file()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text and "/work/" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):  # relative links resolve inside the repo
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), (doc, target)
