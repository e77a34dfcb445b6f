"""varbench's built-in adapters, installed as ``varbench_adapters`` (never as ``adapters``).

Each module wraps one model; they are registered through the ``varbench.adapters`` entry-point
group in ``pyproject.toml``, the same group third-party packages use.
"""
