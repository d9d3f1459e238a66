"""Chat and tool calls for backends that run a model on text through its tokenizer's chat template
(transformers and vLLM's offline engine): render, generate, parse the calls back out.

A template that renders ``tools`` (Qwen, Hermes, Llama 3.1, Mistral) gets them as they are; for one that
does not, the tools are described in the system prompt in the Hermes format (see ``tool_format``).
A forced tool (``tool_choice`` = a name, or ``required``) is written field by field, so it is always
well-formed; the forced calls of one batch are written side by side, each step of all of them batched.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Sequence

from .base import ChatRequest, GenerateRequest, Message, Reply, Stopwatch, ToolCall
from .tool_format import (
    CALL_CLOSE,
    ChooseStep,
    CompleteStep,
    Step,
    call_text,
    forced_steps,
    parse_tool_calls,
    plain_messages,
    template_knows_tools,
)


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

    def _choose_many(self, items: list[tuple[str, list[str]]]) -> list[int]:
        """``_choose`` for many (context, options) at once; a backend that can, batches them."""
        return [self._choose(context, options) for context, options in items]

    def _template_chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(requests)
        free: list[tuple[int, str, GenerateRequest]] = []
        forced: list[tuple[int, str]] = []
        for i, request in enumerate(requests):
            prompt = self.chat_prompt(request)
            if request.tools and request.tool_choice not in ("auto", "none"):
                forced.append((i, prompt))
            else:
                free.append((i, prompt, GenerateRequest(prompt, request.max_tokens, request.temperature)))
        for (i, _), reply in zip(forced, self._forced_replies([(p, requests[i]) for i, p in forced])):
            replies[i] = reply
        for (i, _, _), reply in zip(free, self._complete_texts([(p, g) for _, p, g in free])):
            request = requests[i]
            if request.tools and request.tool_choice == "auto":
                names = [t["function"]["name"] for t in request.tools]
                content, calls = parse_tool_calls(reply.text, names)
                if calls:
                    reply = replace(reply, text=content, tool_calls=tuple(calls), finish_reason="tool_calls")
            replies[i] = reply
        return [r for r in replies if r is not None]

    def _forced_replies(self, items: list[tuple[str, ChatRequest]]) -> list[Reply]:
        """Forced calls written side by side: each step (the tool's choice, an argument's value) of every
        call is one batched call, ``_complete_texts`` for values and ``_choose_many`` for choices."""
        watch = Stopwatch()
        steps = [forced_steps(prompt, request.tools,
                              None if request.tool_choice == "required" else request.tool_choice)
                 for prompt, request in items]
        calls: list[ToolCall | None] = [None] * len(items)
        ended: list[float] = [0.0] * len(items)
        first_token: dict[int, float] = {}
        peaks: list[float] = []  # GPU memory of the steps' generation calls, where measured
        pending: dict[int, Step] = {}

        def advance(i: int, answer: Any) -> None:
            try:
                pending[i] = steps[i].send(answer)
            except StopIteration as done:
                pending.pop(i, None)
                calls[i], ended[i] = done.value, watch.elapsed()

        for i in range(len(items)):
            advance(i, None)
        while pending:
            completes = [(i, s) for i, s in pending.items() if isinstance(s, CompleteStep)]
            chooses = [(i, s) for i, s in pending.items() if isinstance(s, ChooseStep)]
            answers: dict[int, Any] = {}
            if completes:
                started = watch.elapsed()
                done = self._complete_texts([(s.text, GenerateRequest(s.text, s.max_tokens, 0.0, s.stop))
                                             for _, s in completes])
                for (i, _), reply in zip(completes, done):
                    answers[i] = reply.text
                    if reply.gpu_peak_mib is not None:
                        peaks.append(reply.gpu_peak_mib)
                    if i not in first_token and reply.ttft_s is not None:
                        first_token[i] = started + reply.ttft_s
            if chooses:
                for (i, _), pick in zip(chooses, self._choose_many([(s.context, s.options) for _, s in chooses])):
                    answers[i] = pick
            for i, answer in answers.items():
                advance(i, answer)
        replies = []
        for i, ((prompt, _), call) in enumerate(zip(items, calls)):
            assert call is not None
            written = call_text({"name": call.name, "arguments": call.arguments})
            if call.error:
                written = written.removesuffix(CALL_CLOSE)
            replies.append(Reply(
                text="",
                prompt_tokens=len(self.tokenizer(prompt, add_special_tokens=False).input_ids),
                completion_tokens=len(self.tokenizer(written, add_special_tokens=False).input_ids),
                latency_s=ended[i],  # to its call's last step, the calls written beside it included
                ttft_s=first_token.get(i),
                tool_calls=(call,),
                finish_reason="tool_calls",
                backend=self.spec.raw,
                gpu_peak_mib=max(peaks) if peaks else None,
            ))
        return replies
