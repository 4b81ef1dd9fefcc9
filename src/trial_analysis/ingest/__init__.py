"""Ingest: read the raw extract and make it trustworthy.

``readers`` (files in any supported format), ``schemas`` (pandera schemas built from the
config), ``clean`` (validation and repair, one ledger fate per raw record) and ``check_data``
(every problem of an extract listed at once). Uses only the top-level helpers (config, errors,
io); nothing here imports a later stage.
"""
