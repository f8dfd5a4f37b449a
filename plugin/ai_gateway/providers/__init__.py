"""Upstream protocols: a model's ``provider`` decides how the gateway speaks to it.

The gateway's own protocol is OpenAI's; a model whose provider speaks it (``openai``: vLLM, SGLang, OpenAI, any
compatible server) gets the request as the client sent it, at no cost. For the others, one small module per pair
translates, as pure functions: the request (path, headers, body), the answer back to OpenAI's shapes (JSON,
streamed event by event, errors with their status). ``PAIRS`` is the one table of what exists:

==============  ===================================  =========  ==================================
provider        upstream endpoint                    answers    module
==============  ===================================  =========  ==================================
openai          the client's path, as it is          as is      (none)
azure-openai    /openai/deployments/{d}/{op}         as is      azure.py
anthropic       /v1/messages                         translated anthropic.py
gemini          /v1beta/models/{m}:generateContent   translated gemini.py
==============  ===================================  =========  ==================================

``translate`` is what ``attempt.address`` calls for a model with a provider; ``Answer.begin`` is what the
response path calls once it knows which attempt answered (before it reads usage, so accounting, TTFT, the cache
and metrics see OpenAI's shapes).
"""

from __future__ import annotations

from ..request import as_dict
from . import anthropic, azure, gemini
from .common import Whole, include_usage, kind_of
from .config import Provider

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# provider -> (its module, whether bodies are translated: requests there, answers back)
PAIRS: dict[str, tuple[Any, bool]] = {"azure-openai": (azure, False), "anthropic": (anthropic, True),
                                      "gemini": (gemini, True)}
# Every header a provider's request carries besides its key: an attempt on another model goes without them.
PROVIDER_HEADERS = frozenset({"anthropic-version"})
# Answers are read (usage, translation): never compressed (the openai client asks for gzip, hosted APIs give it)
IDENTITY = ("accept-encoding", "identity")


class Answer:
    """How an attempt's answer is turned into OpenAI's shapes (made with the request, used when it answers)."""

    __slots__ = ("module", "usage_wanted")

    def __init__(self, module: Any, usage_wanted: bool) -> None:
        self.module, self.usage_wanted = module, usage_wanted

    def begin(self, status: int, content_type: str | None, now_s: int,
              usage_chunk: bool = True) -> tuple[int, str, Any]:
        """(status for the client, its content type, the translator: ``feed(chunk, end) -> bytes``). A stream's
        translator keeps its usage (``chunks.final``); ``usage_chunk`` False: no usage chunk even when the request
        asks for one (the gateway asked, not the client)."""
        m = self.module
        if not 200 <= status < 300:
            return m.STATUS.get(status, status), "application/json", Whole(lambda body: m.failure(status, body))
        if "text/event-stream" in (content_type or ""):
            return status, "text/event-stream", m.Stream(now_s, self.usage_wanted and usage_chunk)
        return status, "application/json", Whole(lambda body: m.answer(body, now_s))


class Translation:
    """A request for a provider: its ``:path``, the headers to set, the body (None: the client's, as OpenAI's
    protocol has it); ``answer`` None: answers as they are."""

    __slots__ = ("answer", "body", "headers", "path")

    def __init__(self, path: str, headers: list[tuple[str, str]], body: bytes | None, answer: Answer | None) -> None:
        self.path, self.headers, self.body, self.answer = path, headers, body, answer


def translate(p: Provider, doc: Any, client_path: str) -> Translation:
    """The request ``doc`` (a dict or a lazy RequestDoc, sent by the client to ``client_path``) as ``p``'s protocol
    has it; a GatewayError (400, naming the field) for what it cannot carry."""
    module, translated = PAIRS[p.kind]
    stream = doc.get("stream") is True
    path = module.path(p, kind_of(client_path), stream)
    headers = [*module.headers(p), IDENTITY]
    if not translated:
        return Translation(path, headers, None, None)
    full = as_dict(doc)
    return Translation(path, headers, module.request(full, p), Answer(module, include_usage(full)))


__all__ = ["PAIRS", "PROVIDER_HEADERS", "Answer", "Provider", "Translation", "translate"]
