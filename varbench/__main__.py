"""``python -m varbench`` (what ``torchrun -m varbench run ...`` executes)."""

from varbench.cli import main

main()
