"""Stage 4, present: the leaderboard, the CI gate (``check``) and its baselines, paired
comparison (``compare``), the one-shot vs full-set ``contrast``, figures (``plots``), the HTML
``report`` and the study's joins into them (``study_join``). Every metric's direction, label and
unit come from ``varbench.metrics.keys``.

May import: every lower stage, ``study`` and ``errors``.
"""
