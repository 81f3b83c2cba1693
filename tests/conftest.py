"""Shared pytest fixtures."""

import pytest


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """``tiny_artifact(task)`` -> path of a tiny exported artifact for classify/ner/qa/embed (built once per run)."""
    try:
        from .artifacts import build_artifact
    except ImportError:  # tests/ collected as plain directories (no __init__.py)
        from artifacts import build_artifact

    built = {}

    def get(task: str):
        if task not in built:
            built[task] = build_artifact(task, tmp_path_factory.mktemp(f"artifact_{task}") / "art")
        return built[task]

    return get
