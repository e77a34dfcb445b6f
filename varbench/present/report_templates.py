"""The report's rendering pieces: figures as inline SVG that is the same bytes on every build."""

from __future__ import annotations

import io
from typing import Any


def figure_svg(fig: Any, salt: str) -> str:
    """``fig`` as an inline ``<svg>`` element, closed after; deterministic for the same ``salt``.

    Matplotlib names clip paths and markers by a hash salted with a fresh UUID and stamps the
    date unless told otherwise; a fixed salt per figure (unique within the report, so ids never
    collide across figures) and no date make two builds of the same runs byte-identical.
    """
    import matplotlib.pyplot as plt

    from varbench.present.plots import RC

    buf = io.StringIO()
    with plt.rc_context({**RC, "svg.hashsalt": f"varbench report {salt}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]
