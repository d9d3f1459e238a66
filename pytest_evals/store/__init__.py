"""The store: one SQLite file of runs, cases and calls.

- ``rows``: the row types a case's record holds (no I/O: what the processes that run cases import);
- ``migrations``: the schema, an append-only list of migrations;
- ``database``: :class:`~pytest_evals.store.database.Store`, which opens, migrates, writes and reads the file.
"""
