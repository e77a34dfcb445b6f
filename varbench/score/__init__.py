"""Stage 3, score: the content-keyed feature cache (``features``), metric contexts
(``contexts``), scoring one sweep point (``point``), reference statistics files (``statsfile``)
and folder scoring without a run (``folders``).

May import: every lower stage (``core`` .. ``generate``) and ``errors``.
"""
