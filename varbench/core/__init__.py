"""Stage-free foundations: files written atomically (``files``), image decoding (``images``),
hashing and seeds, the plugin ``registry``, typed ``--set`` ``options``, rich ``progress``,
signal ``interrupt``s, ``cluster`` ranks and shards, file ``locks``, and ``env`` (the cache folder
and the provenance every result records).

May import: ``varbench.errors`` and the standard/third-party libraries only.
"""
