"""Parse and validate ``--model`` specs.

A spec names a backend and what it serves, with options after ``?``::

    smollm2
    hf:HuggingFaceTB/SmolLM2-135M-Instruct?dtype=bfloat16&device=cuda
    hf:/models/smol            hf:/models/smol.gguf
    vllm:/models/smol?tensor_parallel_size=2
    openai:gpt-4o-mini         openai:smollm2@http://127.0.0.1:8080/v1
    openai:smollm2@http://10.0.0.1:8080/v1,http://10.0.0.2:8080/v1    (several servers of one model)

Parsing does no I/O: it runs in every process, xdist workers included. What a prefix's specs look
like is declared on its backend class (imported through the registry, which keeps imports light): a
backend with ``takes_url`` reads ``TARGET@http://HOST:PORT/v1`` (or several URLs joined by commas: one model
served by several servers), and without ``@URL`` its ``default_url()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..errors import SpecError
from .registry import BackendRegistry

__all__ = ["DEFAULT_SPEC", "ModelSpec", "SpecError", "parse_spec", "parse_specs", "spec_ids"]

DEFAULT_SPEC = "smollm2"


def _typed(value: str) -> object:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


@dataclass(frozen=True)
class ModelSpec:
    raw: str  # as the user wrote it (credentials in a URL removed)
    backend: str  # the prefix: "hf", "vllm", "openai", or one a plugin registered
    target: str  # model id, folder, file or API model name
    base_url: str | None = None  # the server, for backends that take one (``takes_url``)
    options: tuple[tuple[str, object], ...] = field(default=())
    embedded: bool = False  # the built-in default model
    fallback: "ModelSpec | None" = None  # serves a call when this backend fails: "PRIMARY || FALLBACK"
    # a spec naming several servers (NAME@URL1,URL2,...): every URL, base_url being the first; empty for one
    servers: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """Short name for test ids and tables: the spec without URL and options."""
        if self.embedded:
            return self.raw
        return f"{self.backend}:{self.target}"

    @property
    def urls(self) -> tuple[str, ...]:
        """The servers it names: several for ``NAME@URL1,URL2``, else its one ``base_url`` (none: no server)."""
        return self.servers or ((self.base_url,) if self.base_url else ())

    def at(self, url: str) -> "ModelSpec":
        """The same spec as served by one of its servers (what that server's client is built from)."""
        return replace(self, base_url=url, servers=())

    def option(self, name: str, default: object = None) -> object:
        return dict(self.options).get(name, default)

    def __str__(self) -> str:
        return self.raw


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


Backends = BackendRegistry | Iterable[str] | None  # a registry, or the names of the known prefixes


def _registry(backends: Backends) -> BackendRegistry:
    if isinstance(backends, BackendRegistry):
        return backends
    return BackendRegistry() if backends is None else BackendRegistry.of_prefixes(backends)


def parse_spec(text: str, backends: Backends = None) -> ModelSpec:
    """One spec; ``PRIMARY || FALLBACK`` names a spec that answers when the primary fails."""
    registry = _registry(backends)
    if "||" in text:
        primary_text, _, fallback_text = text.partition("||")
        primary = parse_spec(primary_text, registry)
        fallback = parse_spec(fallback_text, registry)
        return replace(primary, raw=f"{primary.raw} || {fallback.raw}", fallback=fallback)
    text = text.strip()
    if not text:
        raise SpecError("--model: empty spec; try --model=smollm2 or --model=hf:ORG/NAME")
    body, _, query = text.partition("?")
    try:
        options = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise SpecError(f"--model {text!r}: options after '?' must be key=value pairs joined by '&'") from None
    typed_options = tuple((k, _typed(v)) for k, v in options)

    if body == DEFAULT_SPEC:
        return ModelSpec(raw=text, backend="hf", target=DEFAULT_SPEC, options=typed_options, embedded=True)

    prefix, sep, target = body.partition(":")
    if not sep or prefix not in registry.prefixes:
        choices = ", ".join(f"{p}:" for p in registry.prefixes)
        raise SpecError(
            f"--model {text!r}: unknown spec; use {DEFAULT_SPEC!r} or one of the prefixes {choices} "
            "(e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct, openai:MODEL@http://HOST:PORT/v1)"
        )
    if not target:
        raise SpecError(f"--model {text!r}: nothing after '{prefix}:'; name a model, e.g. {prefix}:ORG/NAME")

    backend = registry.resolve(prefix)
    if not backend.takes_url:
        return ModelSpec(raw=text, backend=prefix, target=target, options=typed_options)
    name, at, url = target.partition("@")
    urls = _server_urls(text, url) if at else ()
    base_url = urls[0] if urls else backend.default_url()
    if not name:
        raise SpecError(f"--model {text!r}: name the model before '@', e.g. {prefix}:NAME@{url}")
    raw = f"{prefix}:{name}" + (f"@{','.join(urls or [base_url])}" if base_url else "") + (f"?{query}" if query else "")
    return ModelSpec(raw=raw, backend=prefix, target=name, base_url=base_url, options=typed_options,
                     servers=urls if len(urls) > 1 else ())


def _server_urls(text: str, after_at: str) -> tuple[str, ...]:
    """The URLs after '@': one, or several joined by commas (one model served by several servers)."""
    urls = []
    for url in after_at.split(","):
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            which = f"each URL after '@' ({url!r} does not)" if "," in after_at else "the URL after '@'"
            raise SpecError(f"--model {text!r}: {which} must start with http:// or https://")
        url = _strip_credentials(url).rstrip("/")
        if url in urls:
            raise SpecError(f"--model {text!r}: {url} is named twice after '@'; name each server once")
        urls.append(url)
    return tuple(urls)


def parse_specs(texts: list[str] | None, backends: Backends = None) -> list[ModelSpec]:
    """Parse the repeated --model values; the embedded default when none is given. Duplicates collapse."""
    registry = _registry(backends)
    specs: list[ModelSpec] = []
    for text in texts or [DEFAULT_SPEC]:
        spec = parse_spec(text, registry)
        if spec not in specs:
            specs.append(spec)
    return specs


def spec_ids(specs: list[ModelSpec]) -> list[str]:
    """Ids that carry the model: the short label, or the full spec where two labels collide."""
    labels = [s.label for s in specs]
    return [s.label if labels.count(s.label) == 1 else s.raw for s in specs]
