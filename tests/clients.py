"""The four client protocols, driven by their official SDKs, behind one small interface.

Each client offers ``text(model, stream)``, ``tool_round_trip(model, stream)`` and
``structured(model, stream, schema)`` (JSON output, in the protocol's own field) and
returns plain values, so one test body covers every client x upstream pair. The
google-genai SDK's async client needs asyncio, so its sync client runs in a thread
(its own limiter, abandoned on cancel so ``fail_after`` can end it).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import trio
from google import genai
from google.genai import types

from tests.conftest import DEMO_KEY

WEATHER_SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
QUESTION = "What is the weather in Paris?"


class ChatClient:
    name = "chat"

    def __init__(self, url: str) -> None:
        self.sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=DEMO_KEY, max_retries=0)

    async def aclose(self) -> None:
        await self.sdk.close()

    async def _ask(self, model: str, messages: list, stream: bool, tools=None, **more: Any) -> tuple[str, list]:
        kwargs: dict[str, Any] = {"model": model, "messages": messages, **more}
        if tools:
            kwargs["tools"] = tools
        if not stream:
            reply = await self.sdk.chat.completions.create(**kwargs)
            msg = reply.choices[0].message
            calls = [(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls or []]
            return msg.content or "", calls
        text, calls = "", {}
        async for chunk in await self.sdk.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            text += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, ["", "", ""])
                entry[0] = call.id or entry[0]
                entry[1] = (call.function.name or "") or entry[1]
                entry[2] += call.function.arguments or ""
        return text, [tuple(v) for v in calls.values()]

    async def text(self, model: str, stream: bool) -> str:
        return (await self._ask(model, [{"role": "user", "content": "hi"}], stream))[0]

    async def tool_round_trip(self, model: str, stream: bool) -> tuple[str, dict, str]:
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
        messages: list = [{"role": "user", "content": QUESTION}]
        _, calls = await self._ask(model, messages, stream, tools)
        call_id, name, arguments = calls[0]
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": "sunny"})
        text, _ = await self._ask(model, messages, stream, tools)
        return name, json.loads(arguments), text

    async def structured(self, model: str, stream: bool, schema: dict) -> str:
        fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}}
        return (await self._ask(model, [{"role": "user", "content": QUESTION}], stream, response_format=fmt))[0]


class ResponsesClient:
    name = "responses"

    def __init__(self, url: str) -> None:
        self.sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=DEMO_KEY, max_retries=0)

    async def aclose(self) -> None:
        await self.sdk.close()

    async def _ask(self, model: str, items: Any, stream: bool, tools=None, **more: Any):
        kwargs: dict[str, Any] = {"model": model, "input": items, **more}
        if tools:
            kwargs["tools"] = tools
        if not stream:
            return await self.sdk.responses.create(**kwargs)
        final = None
        async for event in await self.sdk.responses.create(stream=True, **kwargs):
            if event.type == "response.completed":
                final = event.response
        return final

    async def text(self, model: str, stream: bool) -> str:
        return (await self._ask(model, "hi", stream)).output_text

    async def tool_round_trip(self, model: str, stream: bool) -> tuple[str, dict, str]:
        tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}]
        items: list = [{"role": "user", "content": QUESTION}]
        first = await self._ask(model, items, stream, tools)
        call = next(item for item in first.output if item.type == "function_call")
        items += [{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                  {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
        second = await self._ask(model, items, stream, tools)
        return call.name, json.loads(call.arguments), second.output_text

    async def structured(self, model: str, stream: bool, schema: dict) -> str:
        text = {"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}}
        return (await self._ask(model, QUESTION, stream, text=text)).output_text


class AnthropicClient:
    name = "anthropic"

    def __init__(self, url: str) -> None:
        self.sdk = anthropic.AsyncAnthropic(base_url=url, api_key=DEMO_KEY, max_retries=0)

    async def aclose(self) -> None:
        await self.sdk.close()

    async def _ask(self, model: str, messages: list, stream: bool, tools=None, **more: Any):
        kwargs: dict[str, Any] = {"model": model, "max_tokens": 1024, "messages": messages, **more}
        if tools:
            kwargs["tools"] = tools
        if not stream:
            return await self.sdk.messages.create(**kwargs)
        async with self.sdk.messages.stream(**kwargs) as s:
            return await s.get_final_message()

    async def text(self, model: str, stream: bool) -> str:
        reply = await self._ask(model, [{"role": "user", "content": "hi"}], stream)
        return "".join(b.text for b in reply.content if b.type == "text")

    async def tool_round_trip(self, model: str, stream: bool) -> tuple[str, dict, str]:
        tools = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER_SCHEMA}]
        messages: list = [{"role": "user", "content": QUESTION}]
        first = await self._ask(model, messages, stream, tools)
        call = next(b for b in first.content if b.type == "tool_use")
        messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
        second = await self._ask(model, messages, stream, tools)
        return call.name, dict(call.input), "".join(b.text for b in second.content if b.type == "text")

    async def structured(self, model: str, stream: bool, schema: dict) -> str:
        config = {"format": {"type": "json_schema", "schema": schema}}
        reply = await self._ask(model, [{"role": "user", "content": QUESTION}], stream,
                                extra_body={"output_config": config})
        return "".join(b.text for b in reply.content if b.type == "text")


class GeminiClient:
    name = "gemini"

    def __init__(self, url: str) -> None:
        self.sdk = genai.Client(api_key=DEMO_KEY, http_options=types.HttpOptions(
            base_url=url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)))
        self.limiter = trio.CapacityLimiter(2)

    async def aclose(self) -> None:
        self.sdk.close()

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=self.limiter)

    def _generate(self, model: str, contents: Any, stream: bool, config=None) -> tuple[str, list, Any]:
        if not stream:
            reply = self.sdk.models.generate_content(model=model, contents=contents, config=config)
            parts = reply.candidates[0].content.parts or []
            return reply.text or "", list(reply.function_calls or []), reply.candidates[0].content
        text, calls, parts = "", [], []
        for chunk in self.sdk.models.generate_content_stream(model=model, contents=contents, config=config):
            if not chunk.candidates:
                continue
            for part in chunk.candidates[0].content.parts or []:
                parts.append(part)
                text += part.text or ""
                if part.function_call:
                    calls.append(part.function_call)
        return text, calls, types.Content(role="model", parts=parts)

    async def text(self, model: str, stream: bool) -> str:
        return (await self._run(self._generate, model, "hi", stream))[0]

    async def tool_round_trip(self, model: str, stream: bool) -> tuple[str, dict, str]:
        config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[
            types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER_SCHEMA)])])
        contents: list = [types.Content(role="user", parts=[types.Part(text=QUESTION)])]
        _, calls, model_turn = await self._run(self._generate, model, contents, stream, config)
        call = calls[0]
        contents += [model_turn, types.Content(role="user", parts=[
            types.Part.from_function_response(name=call.name, response={"result": "sunny"})])]
        text, _, _ = await self._run(self._generate, model, contents, stream, config)
        return call.name, dict(call.args), text

    async def structured(self, model: str, stream: bool, schema: dict) -> str:
        config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema)
        return (await self._run(self._generate, model, QUESTION, stream, config))[0]


CLIENTS = {c.name: c for c in (ChatClient, ResponsesClient, AnthropicClient, GeminiClient)}
