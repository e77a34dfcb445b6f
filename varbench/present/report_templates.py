"""The report's Jinja2 templates (autoescaped, StrictUndefined) and the values they render.

Every string from data is escaped by the templates. Only what our code produces is marked safe
(``Markup``): a figure's SVG written by matplotlib and a thumbnail's base64 JPEG data URI.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("varbench.present", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def asset(name: str) -> str:
    """A file of the templates folder as text (the inline stylesheet and sorting script)."""
    return (resources.files("varbench.present") / "templates" / name).read_text("utf-8")


def script_sha256(script: str) -> str:
    """The Content-Security-Policy hash that lets exactly ``script`` run inline."""
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode("ascii")


def render(name: str, **context: Any) -> str:
    """One template rendered with ``context``, every data string escaped."""
    return ENV.get_template(name).render(**context)


@dataclass(frozen=True)
class Image:
    """A thumbnail: its data URI (None when the file is not on this machine) and alt text."""

    uri: Markup | None
    alt: str
    size: int


@dataclass(frozen=True)
class NumCell:
    """A sortable numeric cell: data-v (the sort key), the shown text, a note after it."""

    v: str
    text: str
    note: str | None = None


@dataclass(frozen=True)
class Figure:
    """An inline SVG figure and its caption."""

    svg: Markup
    caption: str


def figure_svg(fig: Any, salt: str) -> Markup:
    """``fig`` as an inline ``<svg>`` element (then closed), the same bytes for the same salt."""
    # Matplotlib names clip paths and markers by a hash salted with a fresh UUID and stamps the
    # date unless told otherwise: a fixed salt per figure (unique within the report, so ids never
    # collide across figures) and no date make two builds of the same runs byte-identical.
    import matplotlib.pyplot as plt

    from varbench.present.plots import RC

    buf = io.StringIO()
    with plt.rc_context({**RC, "svg.hashsalt": f"varbench report {salt}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return Markup(text[text.index("<svg") :])  # matplotlib's own SVG: its text labels are escaped


def figure(fig: Any, caption: str, salt: str) -> Figure | None:
    """A figure for the templates, or None when there is nothing to plot."""
    return None if fig is None else Figure(figure_svg(fig, salt), caption)
