"""Backends: ``base`` holds the batch-first protocol and what a backend declares, ``registry`` maps spec
prefixes to backend classes; each other module imports its library lazily."""
