"""``GET /v1/models`` and ``GET /v1/models/{id}``, answered from the configuration (OpenAI's model objects)."""

from __future__ import annotations

import json

from .config import Config
from .errors import GatewayError, shown

MODELS_PATH = "/v1/models"
_PREFIX = MODELS_PATH + "/"


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ai-gateway"}


def models_list(cfg: Config) -> bytes:
    return json.dumps({"object": "list", "data": [_model(n) for n in (*cfg.models, *cfg.aliases)]}).encode()


def model_object(cfg: Config, path: str) -> bytes:
    """The model object for ``/v1/models/<id>`` (a normalised path: ``id`` may contain ``/``), or a 404."""
    name = path[len(_PREFIX):]
    if name in cfg.models or name in cfg.aliases:
        return json.dumps(_model(name)).encode()
    raise GatewayError(404, f"The model `{shown(name)}` does not exist.", "model_not_found", "model")


def is_model_path(path: str) -> bool:
    return path.startswith(_PREFIX) and len(path) > len(_PREFIX)
