"""The served /openapi.json: FastAPI's document of every route and request schema, with
OpenRouter's error envelope in place of FastAPI's 422 (this server answers bad input with 400)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: int
    message: str
    metadata: dict[str, Any] | None = None  # error_type always; param names the field at fault


class ErrorBody(BaseModel):
    """Every error response: {"error": {code, message, metadata}} (spec §6)."""

    error: ErrorDetail


_ERRORS = {
    "400": "Invalid request: the body, a field (metadata.param) or the prompt's length",
    "401": "Missing or unknown API key",
    "404": "Unknown model, or no endpoint matching the provider preferences",
    "408": "Request headers or body too slow to arrive",
    "413": "Request body over the size limit",
    "429": "The engine's queue is full (see Retry-After)",
    "503": "Model loading, engine down, or the server at a concurrency limit (see Retry-After)",
}


def install_openapi(app: FastAPI) -> None:
    """Make app.openapi() (served at /openapi.json) document the error responses we send."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas["ErrorBody"] = body
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for item in doc.get("paths", {}).values():
            for op in item.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                for code, text in _ERRORS.items():
                    responses.setdefault(code, {"description": text, "content": ref})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
