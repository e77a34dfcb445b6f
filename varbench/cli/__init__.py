"""The `varbench` command line: one module per command group, ``main`` the console entry.

May import every stage package and ``varbench.runner``; nothing imports it. Each command module
registers its commands on ``common.app`` when imported here; library code stays behind lazy
imports inside the commands so `varbench --help` starts fast.
"""

from __future__ import annotations

import sys

from varbench.cli import catalog, data, figures, results, run, scoring  # noqa: F401, I001 (registers commands, in --help order)
from varbench.cli.common import app
from varbench.cli.study import study_app
from varbench.core.interrupt import Interrupted
from varbench.core.progress import stderr_console
from varbench.errors import VarbenchError

app.add_typer(study_app, name="study")


def main() -> None:
    """Console-script entry: user errors print one clear message, no traceback."""
    try:
        app()
    except VarbenchError as exc:
        stderr_console.print(
            f"error: {exc}", markup=False, highlight=False, soft_wrap=True, style="red"
        )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr_console.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    except Interrupted as exc:
        stderr_console.print(
            f"interrupted by {exc}: every finished sample, feature and result is kept and no "
            "temporary file is left; re-run the same command to resume (the numbers will be "
            "identical)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(exc.exit_code)


__all__ = ["app", "main"]
