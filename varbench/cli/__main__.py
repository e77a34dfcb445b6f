"""``python -m varbench.cli``."""

from varbench.cli import main

main()
