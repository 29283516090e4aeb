"""``POST /v1/chat/completions``: the OpenAI Chat Completions front door."""

from __future__ import annotations

import re

from gateway.routes.common import bearer, serve_llm
from protocols import openai_chat


async def chat_completions(runtime, scope, receive, send, match) -> None:
    await serve_llm(runtime, openai_chat, scope, receive, send, bearer(scope), openai_chat.parse_request)


ROUTES = [("POST", re.compile(r"^/v1/chat/completions/?$"), chat_completions, openai_chat)]
