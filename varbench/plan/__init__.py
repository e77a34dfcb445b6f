"""Stage 1, plan: what a run will use and make, before anything is generated.

Protocol specs (``protocol``), image preparation (``imageprep``), dataset listing (``datasets``,
``lsun``, ``lmdb_keys``, ``demo_data``), the manifest (``manifest``), the sample slots and
generation groups (``slots``), the run planner (``planner``) and the outside-generation export
(``export``).

May import: ``core``, ``encoders``, ``metrics`` (names for validation), ``errors``.
"""
