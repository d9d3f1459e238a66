"""Chat and tool calls for backends that run a model on text through its tokenizer's chat template
(transformers and vLLM's offline engine): render, generate, parse the calls back out.

A template that renders ``tools`` (Qwen, Hermes, Llama 3.1, Mistral) gets them as they are; for one that
does not, the tools are described in the system prompt in the Hermes format (see ``tool_format``).
A forced tool (``tool_choice`` = a name, or ``required``) is written field by field, so it is always
well-formed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Sequence

from .base import ChatRequest, GenerateRequest, Message, Reply, Stopwatch
from .tool_format import CALL_CLOSE, call_text, forced_call, parse_tool_calls, plain_messages, template_knows_tools


def template_messages(messages: Sequence[Message]) -> list[Message]:
    """OpenAI messages as transformers' chat templates want them: tool arguments as dicts, no None text."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("content") is None:
            message["content"] = ""
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call.get("function", {}))
                if isinstance(function.get("arguments"), str):
                    try:
                        function["arguments"] = json.loads(function["arguments"])
                    except json.JSONDecodeError:
                        pass
                calls.append({**call, "function": function})
            message["tool_calls"] = calls
        out.append(message)
    return out


def render_chat(tokenizer: Any, request: ChatRequest) -> str:
    """The prompt text of a chat request, ending where the assistant's answer starts."""
    tools = list(request.tools) if request.tool_choice != "none" else []
    if template_knows_tools(getattr(tokenizer, "chat_template", None)):
        return tokenizer.apply_chat_template(template_messages(request.messages), tools=tools or None,
                                             add_generation_prompt=True, tokenize=False)
    return tokenizer.apply_chat_template(plain_messages(request.messages, tools),
                                         add_generation_prompt=True, tokenize=False)


class TemplateChat:
    """Mixin: ``chat`` on top of a backend's ``_complete_texts`` (batched generation of raw text) and
    ``_choose`` (index of the likeliest continuation)."""

    tokenizer: Any
    spec: Any

    def _complete_texts(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        raise NotImplementedError

    def _choose(self, context: str, options: list[str]) -> int:
        raise NotImplementedError

    def chat_prompt(self, request: ChatRequest) -> str:
        return render_chat(self.tokenizer, request)

    def count_chat_tokens(self, request: ChatRequest) -> int | None:
        return len(self.tokenizer(self.chat_prompt(request), add_special_tokens=False).input_ids)

    def _template_chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(requests)
        free: list[tuple[int, str, GenerateRequest]] = []
        for i, request in enumerate(requests):
            prompt = self.chat_prompt(request)
            if request.tools and request.tool_choice not in ("auto", "none"):
                replies[i] = self._forced_reply(prompt, request)
            else:
                free.append((i, prompt, GenerateRequest(prompt, request.max_tokens, request.temperature)))
        for (i, _, _), reply in zip(free, self._complete_texts([(p, g) for _, p, g in free])):
            request = requests[i]
            if request.tools and request.tool_choice == "auto":
                names = [t["function"]["name"] for t in request.tools]
                content, calls = parse_tool_calls(reply.text, names)
                if calls:
                    reply = replace(reply, text=content, tool_calls=tuple(calls), finish_reason="tool_calls")
            replies[i] = reply
        return [r for r in replies if r is not None]

    def _forced_reply(self, prompt: str, request: ChatRequest) -> Reply:
        watch = Stopwatch()
        first_token: list[float] = []

        def complete(text: str, stop: tuple[str, ...], max_tokens: int) -> str:
            started = watch.elapsed()
            reply = self._complete_texts([(text, GenerateRequest(text, max_tokens, 0.0, stop))])[0]
            if not first_token and reply.ttft_s is not None:
                first_token.append(started + reply.ttft_s)
            return reply.text

        name = None if request.tool_choice == "required" else request.tool_choice
        call = forced_call(prompt, request.tools, name, complete, self._choose)
        written = call_text({"name": call.name, "arguments": call.arguments})
        if call.error:
            written = written.removesuffix(CALL_CLOSE)
        latency = watch.elapsed()
        return Reply(
            text="",
            prompt_tokens=len(self.tokenizer(prompt, add_special_tokens=False).input_ids),
            completion_tokens=len(self.tokenizer(written, add_special_tokens=False).input_ids),
            latency_s=latency,
            ttft_s=first_token[0] if first_token else None,
            tool_calls=(call,),
            finish_reason="tool_calls",
            backend=self.spec.raw,
        )
