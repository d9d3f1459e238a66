"""Scores and gates: ``stats`` (estimates, 95% intervals, pass@k, paired comparisons; pure Python) and
``gates`` (thresholds from markers, options and ini; a verdict per benchmark and model)."""
