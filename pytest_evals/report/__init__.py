"""What a person reads of a run: ``tables`` (the verdict table and gate reasons), ``usage`` (tokens, cost and
latency per model), ``markdown`` (the CI summary), ``browse`` (``pytest-evals cases`` and ``export``) and
``html`` (the HTML reports and their charts). Built from scores and stored rows; no pytest hooks."""
