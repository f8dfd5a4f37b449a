"""OpenAI -> Azure OpenAI: the same bodies and answers, another address.

Azure serves a model as a *deployment*: ``/openai/deployments/{deployment}/chat/completions?api-version=...``
(also ``/completions`` and ``/embeddings``), with the key in ``api-key``. The body goes as it is (Azure serves
the deployment the path names, whatever ``model`` says: no decoding, no re-encoding). Its answers and errors are
OpenAI's shapes (with Azure's extra members, e.g. ``prompt_filter_results``, which OpenAI clients ignore), so
nothing is translated back.
"""

from __future__ import annotations

from ..errors import GatewayError
from .common import CHAT, COMPLETIONS, EMBEDDINGS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Provider

NAME = "azure-openai"
_OPERATIONS = {CHAT: "chat/completions", COMPLETIONS: "completions", EMBEDDINGS: "embeddings"}


def path(p: Provider, kind: str, stream: bool) -> str:
    op = _OPERATIONS.get(kind)
    if op is None:
        raise GatewayError(400, f"this model ({NAME}) serves /v1/chat/completions, /v1/completions and "
                                "/v1/embeddings only", "unsupported_endpoint")
    return f"/openai/deployments/{p.model}/{op}?api-version={p.api_version}"


def headers(p: Provider) -> list[tuple[str, str]]:
    return []
