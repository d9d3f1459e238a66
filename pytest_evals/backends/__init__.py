"""Backends: ``base`` holds the batch-first protocol; each other module imports its library lazily."""
