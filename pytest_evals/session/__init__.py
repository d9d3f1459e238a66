"""The pytest side of a run: options and state, the item hooks of eval cases, and the controller that owns
the store.

Every process: ``options`` (read into ``state.RunState``), ``state`` (the run's state and per-item keys),
``cases`` (markers, keys, replay, records on reports), ``case_model`` (the ``Model`` a case calls),
``recorder`` (a case's record), ``repeats``, ``limit``, ``resume`` (case keys), ``interruption``
(signals, completion), ``gpus``, ``hookspecs``.
The controller (xdist's, or the lone process): ``controller`` (records, budget, gates, exit status),
``storage`` (the run's row and cases in the store), ``replay`` (the run ``--evals-resume`` replays),
``budget``, ``verdicts`` (stored scores, JUnit, Markdown), ``progress``, ``terminal`` and ``xdist``.
"""
