"""The one error mapper: every failure becomes OpenRouter's `{"error": {code, message, metadata}}`."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gemmaserve.protocol.common import FieldError
from gemmaserve.types import (
    EngineDeadError,
    EngineError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
)

log = logging.getLogger("gemmaserve.api")

# OpenRouter's typed error_type per status (spec §6.3), used when a raise site names none.
_DEFAULT_TYPE = {
    400: "invalid_request",
    401: "authentication",
    403: "permission_denied",
    404: "not_found",
    405: "invalid_request",
    413: "payload_too_large",
    422: "unprocessable",
    429: "rate_limit_exceeded",
    500: "server",
    502: "provider_unavailable",
    503: "provider_overloaded",
}


class APIError(Exception):
    """An error with its HTTP status, raised anywhere in the api layer."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or _DEFAULT_TYPE.get(status, "unmapped")
        self.metadata = metadata or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "metadata": {"error_type": self.error_type, **self.metadata},
            }
        }


def translated(convert: Callable[[Any], Any], req: Any) -> Any:
    """`convert(req)` (a wire-format translator); a FieldError it raises becomes a 400 naming the
    field, as does a request the translation produces that fails the target type's validation
    (an Anthropic user turn with empty content leaves a chat request with no messages)."""
    try:
        return convert(req)
    except FieldError as exc:
        raise APIError(400, f"Invalid value for '{exc.param}': {exc}", "invalid_request", {"param": exc.param}) from None
    except ValidationError as exc:
        message, field = validation_message(RequestValidationError(exc.errors(include_url=False)))
        raise APIError(400, message, "invalid_request", {"param": field} if field else {}) from None


def engine_error_to_api(exc: EngineError) -> APIError:
    """Map the engine's typed errors (types.py) onto statuses."""
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), "context_length_exceeded", {"provider_name": None})
    if isinstance(exc, QueueFullError):
        return APIError(
            429, "Too many requests are waiting; retry shortly.", "rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), "invalid_request")
    if isinstance(exc, EngineDeadError):
        return APIError(503, "The inference engine is not running.", "provider_unavailable",
                        headers={"Retry-After": "5"})
    return APIError(500, "Internal Server Error", "server")


# An endpoint family with its own error envelope (Anthropic's {"type": "error", "error": {...}})
# registers a formatter for its path prefixes on app.state.error_envelopes; every error raised
# under those paths (validation, auth, admission, engine refusal) is then written in that shape.
ErrorEnvelope = Callable[[APIError], dict[str, Any]]


def register_error_envelope(app: FastAPI, path_prefix: str, envelope: ErrorEnvelope) -> None:
    app.state.error_envelopes = {**getattr(app.state, "error_envelopes", {}), path_prefix: envelope}


def enveloped(err: APIError, app: Any, path: str) -> dict[str, Any]:
    """`err` in the envelope registered for `path` on `app` (OpenRouter's when none is)."""
    state = getattr(app, "state", None)
    for prefix, envelope in getattr(state, "error_envelopes", {}).items():
        if path.startswith(prefix):
            return envelope(err)
    return err.body()


def error_response(err: APIError, request: Request | None = None) -> JSONResponse:
    body = err.body() if request is None else enveloped(err, request.app, request.url.path)
    return ErrorJSONResponse(body, status_code=err.status, headers=err.headers)


class ErrorJSONResponse(JSONResponse):
    """Error bodies in ASCII JSON: a message may quote what the client sent (an unknown model id),
    and a lone surrogate in it has no UTF-8 form but a valid `\\udXXX` JSON escape."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _field_path(loc: tuple) -> str:
    # loc looks like ("body", "messages", 0, "content"); the leading "body" is noise to a client.
    parts = [str(p) for p in (loc[1:] if loc[:1] == ("body",) else loc)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "Invalid JSON in request body", None
    field = _field_path(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    blamed = (first.get("ctx") or {}).get("error")
    if isinstance(blamed, FieldError):  # a cross-field check that names its field
        field = f"{field}.{blamed.param}" if field else blamed.param
    if not field:
        return f"Invalid request body: {msg}", None
    if first.get("type") == "missing":
        return f"Missing required field '{field}'", field
    return f"Invalid value for '{field}': {msg}", field


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc, request)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        return error_response(engine_error_to_api(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, field = validation_message(exc)
        meta = {"param": field} if field else {}
        return error_response(APIError(400, message, "invalid_request", meta), request)

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(request: Request, exc: json.JSONDecodeError):
        return error_response(APIError(400, "Invalid JSON in request body", "invalid_request"), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "Error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"Not found: {request.method} {request.url.path}"
        return error_response(APIError(exc.status_code, message, headers=getattr(exc, "headers", None)), request)

    @app.exception_handler(Exception)
    async def _catch_all(request: Request, exc: Exception):
        # A bug, never a client's fault: log the trace, mask the message (OpenRouter masks 500s too).
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "Internal Server Error", "server"), request)
