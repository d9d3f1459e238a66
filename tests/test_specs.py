"""--model spec parsing (pure: no I/O)."""

import pytest

from pytest_evals.backends.specs import ModelSpec, SpecError, parse_spec, parse_specs, spec_ids


def test_embedded_default() -> None:
    spec = parse_spec("smollm2")
    assert spec == ModelSpec(raw="smollm2", backend="hf", target="smollm2", embedded=True)
    assert spec.label == "smollm2"
    assert parse_specs(None) == [spec]


def test_hf_with_typed_options() -> None:
    spec = parse_spec("hf:HuggingFaceTB/SmolLM2-135M-Instruct?dtype=bfloat16&device=cuda&batch_size=4&trust=true")
    assert (spec.backend, spec.target) == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert spec.option("dtype") == "bfloat16" and spec.option("batch_size") == 4 and spec.option("trust") is True
    assert spec.label == "hf:HuggingFaceTB/SmolLM2-135M-Instruct"


def test_openai_url_from_spec_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_spec("openai:smol@http://127.0.0.1:8080/v1/")
    assert (spec.target, spec.base_url, spec.label) == ("smol", "http://127.0.0.1:8080/v1", "openai:smol")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1")
    assert parse_spec("openai:gpt-4o-mini").base_url == "http://127.0.0.1:9000/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert parse_spec("openai:gpt-4o-mini").base_url == "https://api.openai.com/v1"


def test_credentials_in_a_url_never_reach_the_spec() -> None:
    spec = parse_spec("openai:m@https://user:sk-secret@example.test:8443/v1")
    assert "sk-secret" not in spec.raw and spec.base_url == "https://example.test:8443/v1"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("gpt4", "unknown spec"),
        ("foo:bar", "unknown spec"),
        ("hf:", "nothing after 'hf:'"),
        ("openai:m@ftp://x", "must start with http"),
        ("openai:@http://127.0.0.1:1/v1", "name the model before '@'"),
        ("hf:x?novalue", "key=value"),
        ("", "empty spec"),
    ],
)
def test_bad_specs_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_spec(text)


def test_registered_prefixes_are_accepted() -> None:
    assert parse_spec("fake:x", ("hf", "fake")).backend == "fake"


def test_ids_are_short_unless_they_collide() -> None:
    a = parse_spec("openai:m@http://127.0.0.1:1/v1")
    b = parse_spec("openai:m@http://127.0.0.1:2/v1")
    c = parse_spec("smollm2")
    assert spec_ids([a, c]) == ["openai:m", "smollm2"]
    assert spec_ids([a, b]) == [a.raw, b.raw]
    assert parse_specs(["smollm2", "smollm2"]) == [c]


def test_fallback_spec() -> None:
    spec = parse_spec("openai:gpt-4o-mini@http://127.0.0.1:8080/v1 || hf:/models/smol?dtype=float32")
    assert spec.label == "openai:gpt-4o-mini" and spec.backend == "openai"
    assert spec.fallback == parse_spec("hf:/models/smol?dtype=float32")
    assert spec.raw == "openai:gpt-4o-mini@http://127.0.0.1:8080/v1 || hf:/models/smol?dtype=float32"
    with pytest.raises(SpecError, match="unknown spec"):
        parse_spec("smollm2 || nope:x")
