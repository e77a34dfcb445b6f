"""Consent text and optional screening questions: read from files, answers checked and stored.

``--questions FILE`` is a JSON list of questions, each ``{"id": "age", "text": "Your age?",
"type": "choice" | "text" | "number", "options": [...] (choice only), "required": true}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from varbench.errors import UsageError

ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TYPES = ("choice", "text", "number")
MAX_ANSWER = 500
MAX_CONSENT = 20_000


def load_consent(path: Path | None) -> str:
    """The consent text of ``--consent FILE`` ('' without one)."""
    if path is None:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--consent {path}: cannot read it as UTF-8 text ({exc})") from None
    if not text or len(text) > MAX_CONSENT:
        raise UsageError(f"--consent {path}: needs 1-{MAX_CONSENT} characters of text")
    return text


def load_questions(path: Path | None) -> list[dict]:
    """The screening questions of ``--questions FILE`` (validated), [] without one."""
    if path is None:
        return []
    fix = ('a JSON list like [{"id": "age", "text": "Your age?", "type": "number"}, '
           '{"id": "vision", "text": "Normal colour vision?", "type": "choice", '
           '"options": ["yes", "no"]}]')  # fmt: skip
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--questions {path}: cannot read it ({exc}); expected {fix}") from None
    if not isinstance(items, list) or not items:
        raise UsageError(f"--questions {path}: expected {fix}")
    out, ids = [], set()
    for i, q in enumerate(items):
        where = f"--questions {path}: question {i + 1}"
        if not isinstance(q, dict) or not ID_RE.match(str(q.get("id", ""))):
            raise UsageError(f"{where}: needs an id of lowercase letters, digits and '_'; "
                             f"expected {fix}")  # fmt: skip
        if q["id"] in ids:
            raise UsageError(f"{where}: id {q['id']!r} is used twice")
        ids.add(q["id"])
        kind = q.get("type", "text")
        if kind not in TYPES or not str(q.get("text", "")).strip():
            raise UsageError(f"{where}: needs text and a type in {', '.join(TYPES)}")
        options = [str(o) for o in q.get("options", [])]
        if kind == "choice" and len(options) < 2:
            raise UsageError(f"{where}: a choice needs at least two options")
        out.append({"id": q["id"], "text": str(q["text"]), "type": kind, "options": options,
                    "required": bool(q.get("required", True))})  # fmt: skip
    return out


def parse_answers(questions: list[dict], form: dict[str, str]) -> tuple[dict, str | None]:
    """(answers, None) when the form answers the questions, else ({}, what is wrong)."""
    answers: dict[str, object] = {}
    for q in questions:
        value = form.get(q["id"], "").strip()[:MAX_ANSWER]
        if not value:
            if q["required"]:
                return {}, f"Please answer: {q['text']}"
            continue
        if q["type"] == "choice" and value not in q["options"]:
            return {}, f"Please pick one of the options for: {q['text']}"
        if q["type"] == "number":
            try:
                answers[q["id"]] = float(value)
            except ValueError:
                return {}, f"Please answer with a number: {q['text']}"
            continue
        answers[q["id"]] = value
    return answers, None
