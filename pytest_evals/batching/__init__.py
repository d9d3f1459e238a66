"""Batching across cases, on the pytest side: ``windows`` runs a window of eval cases together through
pytest's own hooks, ``parking`` sets several sibling cases up at once, ``queue`` knows which cases this
process runs next (under xdist: this worker's queue). The rounds of batched calls are ``calls.planner``."""
