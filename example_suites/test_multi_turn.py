"""Multi-turn dialogues: the last answer must use what an earlier turn said (a fact, a count, a topic)
or keep a constraint the system prompt set (one word, a number, capital letters).

Checks are rules on the last reply: ``contains`` (any of the words, as whole words), ``max_words``,
``uppercase``.
"""

import re

import pytest

from pytest_evals import load_jsonl

DIALOGUES = load_jsonl(__file__, "multi_turn.jsonl")


def problems(reply: str, check: dict) -> list[str]:
    text = reply.strip()
    found = []
    words = re.findall(r"[\w']+", text.lower())
    if "contains" in check and not any(w in words for w in check["contains"]):
        found.append(f"none of {check['contains']} in {text[:120]!r}")
    if "max_words" in check and len(words) > check["max_words"]:
        found.append(f"{len(words)} words, more than {check['max_words']}")
    if check.get("uppercase") and text != text.upper():
        found.append(f"not in capital letters: {text[:60]!r}")
    return found


@pytest.mark.evals_threshold(0.25)  # calibrated on the embedded default (about 38%)
@pytest.mark.parametrize("dialogue", DIALOGUES, ids=lambda d: d["id"])
def test_multi_turn(model, dialogue):
    chat = model.conversation(system=dialogue["system"], max_tokens=32)
    for text in dialogue["turns"]:
        reply = chat.say(text)
    assert len(chat.messages) == 2 * len(dialogue["turns"]) + (dialogue["system"] is not None)
    assert not problems(reply.text, dialogue["check"]), problems(reply.text, dialogue["check"])
