"""Stage 2, generate: adapter generation in fixed groups (``sampling``), import of samples made
elsewhere (``external``) and weight prefetching for offline nodes (``fetching``).

May import: ``core``, ``encoders``, ``metrics``, ``plan``, ``adapter``, ``runs``, ``errors``.
"""
