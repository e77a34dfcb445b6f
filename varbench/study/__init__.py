"""Human preference studies: build from finished runs, serve to raters, analyse the votes.

Rooms: ``db`` (SQLite schema and versioned open), ``create`` (trials from runs), ``server``
(Starlette app), ``stats`` (pure statistics on vote arrays), ``analysis`` (votes -> tables).
"""
