"""A model's upstream protocol (``models[].provider``) and what that protocol needs, validated at start."""

from __future__ import annotations

from proxywasm import ConfigError, record

from ..fieldcheck import echo, header_value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from proxywasm import Fields

PROVIDERS = ("openai", "azure-openai", "anthropic", "gemini")
KEY_HEADERS = {"openai": "authorization", "azure-openai": "api-key", "anthropic": "x-api-key",
               "gemini": "x-goog-api-key"}  # where each provider takes its API key (the key pool's default header)
ANTHROPIC_VERSION = "2023-06-01"
AZURE_API_VERSION = "2024-10-21"
ANTHROPIC_MAX_TOKENS = 4096
# Fields that belong to one provider: set for another, they are an error (a typo or a copied config).
OWN_FIELDS = {"deployment": "azure-openai", "api_version": "azure-openai", "anthropic_version": "anthropic",
              "max_tokens": "anthropic"}


_SEGMENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


def _segment(m: Fields, key: str, value: str) -> str:
    """A value that goes into the upstream path (a deployment, an api-version, a model id): no separators."""
    if not value or not set(value) <= _SEGMENT:
        raise ConfigError(f"{m.path(key)}: must be letters, digits and ._-@ only (it goes into the upstream path), "
                          f"got {echo(value)}")
    return value


@record
class Provider:
    """How to speak to a model that is not OpenAI-compatible (``kind``), with what its protocol needs."""

    kind: str  # azure-openai | anthropic | gemini
    model: str  # the provider's model id (Gemini, Anthropic), or the Azure deployment
    api_version: str = ""  # Azure: the api-version query parameter
    anthropic_version: str = ""  # Anthropic: the anthropic-version header
    max_tokens: int = 0  # Anthropic: max_tokens when the request sets none (Anthropic requires one)


def parse(m: Fields, upstream_model: str) -> Provider | None:
    """``models[i].provider`` and its fields; None for ``openai`` (the request goes as it is)."""
    kind = m.choice("provider", PROVIDERS, "openai")
    for field, owner in OWN_FIELDS.items():
        if field in m.doc and owner != kind:
            raise ConfigError(f"{m.path(field)}: only for provider {owner} (this model's provider is {kind})")
    if kind == "openai":
        return None
    if kind == "azure-openai":
        return Provider(kind, _segment(m, "deployment", m.str("deployment", upstream_model)),
                        api_version=_segment(m, "api_version", m.str("api_version", AZURE_API_VERSION)))
    if kind == "anthropic":
        version = header_value(m, "anthropic_version", m.str("anthropic_version", ANTHROPIC_VERSION))
        return Provider(kind, upstream_model, anthropic_version=version,
                        max_tokens=m.int("max_tokens", ANTHROPIC_MAX_TOKENS, min=1, max=1 << 20))
    return Provider(kind, _segment(m, "upstream_model", upstream_model))
