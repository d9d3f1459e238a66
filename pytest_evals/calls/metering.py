"""Prices and the cost of a call.

Prices come from plugins (the ``pytest_evals_prices`` hook) and from the ini key ``evals_prices``,
one line per model glob (later lines win, so the ini file overrides plugins)::

    openai:gpt-4o-mini 0.15 0.60        # USD per million input / output tokens
    vllm:* gpu_hour=2.50                # local backends: GPU time, from each call's latency

A glob matches a model's spec (``openai:gpt-4o-mini@https://…``) or its short name
(``openai:gpt-4o-mini``). A call without a matching price, or without the token counts its price
needs, costs ``None`` (unknown), never 0.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from ..errors import ConfigError


class PriceError(ConfigError):
    """A bad ini evals_prices line; the message names the fix."""


@dataclass(frozen=True)
class Price:
    glob: str
    input_per_m: float | None = None  # USD per million input tokens
    output_per_m: float | None = None
    gpu_hour: float | None = None  # USD per hour of GPU time

    def cost(self, input_tokens: int | None, output_tokens: int | None, latency_s: float | None) -> float | None:
        if self.gpu_hour is not None:
            return None if latency_s is None else latency_s / 3600 * self.gpu_hour
        if input_tokens is None or output_tokens is None:
            return None
        return (input_tokens * (self.input_per_m or 0) + output_tokens * (self.output_per_m or 0)) / 1e6


def parse_price_line(line: str, source: str = "ini evals_prices") -> Price:
    where = f"{source} {line.strip()!r}"
    tokens = line.split()
    if len(tokens) < 2:
        raise PriceError(f"{where}: expected 'MODEL_GLOB INPUT_USD_PER_M OUTPUT_USD_PER_M' or "
                                "'MODEL_GLOB gpu_hour=USD'")
    glob, values = tokens[0], tokens[1:]
    try:
        if len(values) == 1 and values[0].startswith("gpu_hour="):
            price = Price(glob, gpu_hour=float(values[0].split("=", 1)[1]))
        elif len(values) == 2:
            price = Price(glob, input_per_m=float(values[0]), output_per_m=float(values[1]))
        else:
            raise ValueError
    except ValueError:
        raise PriceError(f"{where}: expected two prices (input, output USD per million tokens) "
                                "or gpu_hour=USD") from None
    if any(v is not None and (v < 0 or not math.isfinite(v)) for v in (price.input_per_m, price.output_per_m,
                                                                       price.gpu_hour)):
        raise PriceError(f"{where}: prices must be finite and not negative")
    return price


class PriceTable:
    def __init__(self, prices: list[Price]) -> None:
        self.prices = prices

    def find(self, spec: str, name: str) -> Price | None:
        spec_base = spec.partition("?")[0]
        matches = [p for p in self.prices
                   if fnmatch.fnmatchcase(spec_base, p.glob) or fnmatch.fnmatchcase(name, p.glob)]
        return matches[-1] if matches else None
