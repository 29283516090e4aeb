"""The dispatcher's view of a provider and of what it opens, as ``typing.Protocol``s.

One class per family (``providers.registry``) satisfies ``Provider``; those whose
upstream has a counting endpoint (Anthropic ``count_tokens``, Gemini ``countTokens``)
satisfy ``CountingProvider`` too. A stream opens as an ``UpstreamStream``: a
``providers.base.FrameReader`` over HTTP, or a ``providers.responses_socket.SocketTurn``
over a Responses WebSocket. The credential is whatever the credential actor leases
(``actors.credentials.CredentialSpec``); a provider needs only its id and its secret,
and providers import nothing of ``actors``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from protocols.redact import Redactor
from protocols.secret import Secret
from protocols.seams import StreamDecoder
from protocols.unified import UnifiedRequest

if TYPE_CHECKING:
    from providers.adapters.chain import ProviderAdapters
    from providers.base import Completion, Frame
    from providers.http11 import Pool


class Credential(Protocol):
    """One leased upstream credential."""

    @property
    def id(self) -> str: ...

    @property
    def secret(self) -> Secret: ...


class UpstreamStream(Protocol):
    """An upstream's streamed answer, read as batches of frames."""

    @property
    def content_type(self) -> str: ...

    @property
    def decoder(self) -> StreamDecoder: ...

    @property
    def terminal(self) -> bool:
        """The upstream protocol's own last event arrived."""
        ...

    def redecode(self, payloads: list) -> list:
        """Frames that were forwarded undecoded, decoded in full (for a partial charge)."""
        ...

    async def next_batch(self) -> list[Frame] | None: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    """What the dispatcher and the runtime use of a provider; one implementation per family."""

    @property
    def name(self) -> str: ...

    @property
    def protocol(self) -> str:
        """The wire protocol it speaks upstream (``protocols.*.NAME``)."""
        ...

    @property
    def client(self) -> Pool: ...

    @property
    def adapters(self) -> ProviderAdapters: ...

    redactor: Redactor  # replaced when a reload brings new secrets

    def stream(self, req: UnifiedRequest, model: str,
               credential: Credential) -> AbstractAsyncContextManager[UpstreamStream]: ...

    async def complete(self, req: UnifiedRequest, model: str, credential: Credential) -> Completion: ...


class CountingProvider(Provider, Protocol):
    """A provider whose upstream counts a request's input tokens itself."""

    async def count_tokens(self, req: UnifiedRequest, model: str, credential: Credential) -> tuple[int, bytes]:
        """The upstream's count and its answer's bytes."""
        ...


if TYPE_CHECKING:  # each family is held to the seam by the type checker
    from providers.anthropic import AnthropicProvider
    from providers.gemini import GeminiProvider
    from providers.openai import OpenAIResponsesProvider
    from providers.openai_compat import OpenAICompatProvider

    def _families(chat: OpenAICompatProvider, responses: OpenAIResponsesProvider,
                  anthropic: AnthropicProvider, gemini: GeminiProvider) -> None:
        _: tuple[Provider, ...] = (chat, responses, anthropic, gemini)
        __: tuple[CountingProvider, ...] = (anthropic, gemini)
