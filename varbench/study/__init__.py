"""Human preference studies: build from finished runs, serve to raters, analyse the votes.

Rooms: ``db`` (SQLite schema and versioned open), ``create`` (trials from runs), ``server``
(Starlette app), ``stats`` (pure statistics on vote arrays), ``analysis`` (votes -> tables).

May import: ``core``, ``runs`` (finished runs to draw trials from), ``errors``; its command
line lives in ``varbench.cli.study`` and its joins into the leaderboard and report in
``varbench.present.study_join``.
"""
