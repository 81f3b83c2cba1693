"""What a user may send ``predict`` for each task, checked: the runtime's side of the input contract.

Tokenization, windows and padding are ``bertrt.tasks.encode``'s, shared with training and evaluation.
"""

from __future__ import annotations

from ..errors import InputError
from ..tasks import SEQUENCE_TASKS
from ..tasks.encode import check_spans


def parse_input(item, task: str) -> tuple[str, str | None]:
    """Turn one user input into (first text, optional second text) for ``task``, or raise ``InputError``.

    classify: "text" or {"text", optional "text_pair"} or (text, pair); ner / embed: "text" or {"text"};
    qa: {"question", "context"} or (question, context).
    """
    if task == "relation":
        if not isinstance(item, dict):
            raise InputError('a relation input is {"text": ..., "head": [start, end], "tail": [start, end]}')
        _check_str(item.get("text"), "text")
        for name in ("head", "tail"):
            if name not in item:
                raise InputError(f'a relation input needs "{name}": [start, end], a character span of the text')
        problem = check_spans(item["text"], item["head"], item["tail"])
        if problem:
            raise InputError(problem)
        return item["text"], (tuple(item["head"]), tuple(item["tail"]))
    if task == "qa":
        if isinstance(item, dict):
            q, c = item.get("question"), item.get("context")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            q, c = item
        else:
            raise InputError('a qa input is {"question": ..., "context": ...} (or a (question, context) pair)')
        _check_str(q, "question")
        _check_str(c, "context")
        return q, c
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        text, pair = item.get("text"), item.get("text_pair")
    elif isinstance(item, (tuple, list)) and len(item) == 2 and task in SEQUENCE_TASKS:
        text, pair = item
    else:
        raise InputError(f'a {task} input is a string or {{"text": ...}}' +
                         (' with an optional "text_pair"' if task in SEQUENCE_TASKS else ""))
    _check_str(text, "text")
    if pair is not None:
        if task not in SEQUENCE_TASKS:
            raise InputError(f'"text_pair" is only for classify and multilabel artifacts, not {task}')
        _check_str(pair, "text_pair")
    return text, pair


def _check_str(value, name: str) -> None:
    if not isinstance(value, str):
        raise InputError(f'"{name}" must be a string, not {type(value).__name__}')
