"""Python functions become tool schemas; calling them turns exceptions into tool errors."""

from __future__ import annotations

from typing import Literal, Optional

from pytest_evals.backends.base import ToolCall
from pytest_evals.tools import parse_docstring, tool


def convert(value: float, unit: Literal["km", "mi"], precision: int = 2, tags: Optional[list[str]] = None) -> float:
    """Convert a distance between kilometres and miles.

    Args:
        value: The distance to convert.
        unit (str): The unit of ``value``; the result is in the other unit.
        precision: Decimal places to round to,
            counted after the point.

    Returns:
        The converted distance.
    """
    factor = 0.621371 if unit == "km" else 1 / 0.621371
    return round(value * factor, precision)


def lookup(city: str, year: int) -> dict:
    """
    Population of a city.

    Parameters
    ----------
    city : str
        Name of the city.
    year : int
        Census year.

    Returns
    -------
    dict
    """
    raise KeyError(city)


def test_google_style_function_schema() -> None:
    schema = tool(convert).schema
    assert schema == {
        "type": "function",
        "function": {
            "name": "convert",
            "description": "Convert a distance between kilometres and miles.",
            "parameters": {
                "type": "object",
                "properties": {
                    "value": {"type": "number", "description": "The distance to convert."},
                    "unit": {"enum": ["km", "mi"], "type": "string",
                             "description": "The unit of ``value``; the result is in the other unit."},
                    "precision": {"type": "integer",
                                  "description": "Decimal places to round to, counted after the point."},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["value", "unit"],
            },
        },
    }


def test_numpy_style_docstring() -> None:
    description, arguments = parse_docstring(lookup.__doc__)
    assert description == "Population of a city."
    assert arguments == {"city": "Name of the city.", "year": "Census year."}
    params = tool(lookup).schema["function"]["parameters"]
    assert params["properties"]["year"] == {"type": "integer", "description": "Census year."}


def test_calling_a_tool_returns_the_result_or_the_error() -> None:
    assert tool(convert).call({"value": 10, "unit": "km"}) == ToolCall("convert", {"value": 10, "unit": "km"},
                                                                        6.21, None)
    failed = tool(lookup).call({"city": "Atlantis", "year": 2020})
    assert failed.result is None and failed.error == "KeyError: 'Atlantis'"
    bad = tool(convert).call({"value": 1})
    assert bad.error.startswith("TypeError:") and "unit" in bad.error
