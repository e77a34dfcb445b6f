"""Crowd platforms: how a participant arrives (join parameters) and leaves (codes, redirects).

Prolific and generic links carry the participant id as a query parameter; MTurk's
ExternalQuestion appends ``workerId``, ``assignmentId``, ``hitId`` and ``turkSubmitTo`` to the
URL itself, runs the page in an iframe and expects a POST to ``externalSubmit``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, urlsplit

from varbench.errors import UsageError

EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
MTURK_SUBMIT = {
    "https://www.mturk.com/mturk/externalSubmit",
    "https://workersandbox.mturk.com/mturk/externalSubmit",
}
MTURK_PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE"
PROLIFIC_COMPLETE = "https://app.prolific.com/submissions/complete?cc="


@dataclass(frozen=True)
class Platform:
    """The query parameters a platform puts on the join link."""

    name: str
    id_param: str
    extra: tuple[str, ...]
    placeholders: dict[str, str] = field(default_factory=dict)

    def join_query(self) -> str:
        """The query string to paste into the platform (its own placeholders)."""
        names = (self.id_param, *self.extra)
        return "&".join(f"{n}={self.placeholders[n]}" for n in names if n in self.placeholders)


PLATFORMS = {
    "prolific": Platform(
        "prolific", "PROLIFIC_PID", ("STUDY_ID", "SESSION_ID"),
        {"PROLIFIC_PID": "{{%PROLIFIC_PID%}}", "STUDY_ID": "{{%STUDY_ID%}}",
         "SESSION_ID": "{{%SESSION_ID%}}"},
    ),
    # MTurk appends its parameters to the ExternalQuestion URL itself: nothing to paste.
    "mturk": Platform("mturk", "workerId", ("assignmentId", "hitId", "turkSubmitTo")),
    "generic": Platform("generic", "participant", (), {"participant": "PARTICIPANT_ID"}),
}  # fmt: skip


@dataclass(frozen=True)
class Exit:
    """Where a participant goes at the end: codes and platform URLs (stored with the study)."""

    platform: str = "generic"
    completion_code: str = ""
    completion_url: str = ""
    screenout_code: str = ""
    screenout_url: str = ""

    def validate(self) -> Exit:
        """Self with the platform's default URLs filled, or a UsageError naming the flag."""
        if self.platform not in PLATFORMS:
            raise UsageError(
                f"--platform {self.platform}: expected one of {', '.join(sorted(PLATFORMS))}"
            )
        for flag, code in (("--completion-code", self.completion_code),
                           ("--screenout-code", self.screenout_code)):  # fmt: skip
            if code and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", code):
                raise UsageError(f"{flag} {code!r}: use 1-64 letters, digits, '_' or '-'")
        done, out = self.completion_url, self.screenout_url
        if self.platform == "prolific":
            if self.completion_code and not done:
                done = PROLIFIC_COMPLETE + quote(self.completion_code)
            if self.screenout_code and not out:
                out = PROLIFIC_COMPLETE + quote(self.screenout_code)
            if not self.completion_code:
                raise UsageError("--platform prolific needs --completion-code CODE (the code "
                                 "Prolific shows under 'How do you want to confirm completion')")  # fmt: skip
        if self.platform == "mturk":
            done = done or "https://www.mturk.com/mturk/externalSubmit"
            if done not in MTURK_SUBMIT:
                raise UsageError(
                    f"--completion-url {done}: with --platform mturk it must be MTurk's "
                    f"externalSubmit ({' or '.join(sorted(MTURK_SUBMIT))})"
                )
            if out and out != done:
                raise UsageError("--screenout-url: with --platform mturk both outcomes post to "
                                 "externalSubmit; leave --screenout-url out")  # fmt: skip
            out = done
        for flag, url in (("--completion-url", done), ("--screenout-url", out)):
            check_url(flag, url)
        return Exit(self.platform, self.completion_code, done, self.screenout_code, out)

    def as_dict(self) -> dict[str, str]:
        """The exit settings as stored in the study's metadata."""
        return asdict(self)

    def frame_origin(self) -> str | None:
        """The one origin allowed to frame the pages (MTurk's), else None."""
        if self.platform != "mturk":
            return None
        parts = urlsplit(self.completion_url)
        return f"{parts.scheme}://{parts.netloc}"


def check_url(flag: str, url: str) -> None:
    """A redirect target must be https (http only for this machine, for tests)."""
    if not url:
        return
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if (
        parts.scheme not in ("https", "http")
        or not parts.netloc
        or (parts.scheme == "http" and not local)
    ):
        raise UsageError(f"{flag} {url!r}: expected an https:// URL (the platform's page)")


def external_id(platform: str, query: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """The participant's id and the platform's other ids from the join query, or None."""
    spec = PLATFORMS[platform]
    pid = query.get(spec.id_param, "")
    if not EXTERNAL_ID_RE.match(pid):
        return None
    extra = {k: query[k][:256] for k in spec.extra if query.get(k)}
    return pid, extra


def join_link(base_url: str, platform: str) -> str:
    """The one public entry link of a study, in the form the platform wants pasted."""
    query = PLATFORMS[platform].join_query()
    return f"{base_url.rstrip('/')}/join" + (f"?{query}" if query else "")
