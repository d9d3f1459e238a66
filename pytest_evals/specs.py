"""``from pytest_evals.specs import SpecError, ModelSpec``: the import path backend plugins were written
against (the README's backend example). Spec parsing lives in :mod:`pytest_evals.backends.specs`."""

from .backends.specs import DEFAULT_SPEC, ModelSpec, SpecError, parse_spec, parse_specs, spec_ids

__all__ = ["DEFAULT_SPEC", "ModelSpec", "SpecError", "parse_spec", "parse_specs", "spec_ids"]
