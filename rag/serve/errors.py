"""OpenAI-style error objects for /v1: every failure is JSON that says what to do, never a traceback.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages", "code": "..."}}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from rag.errors import IndexStateError, ModelError, QuestionError, RagError

log = logging.getLogger(__name__)

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         503: "server_error", 500: "server_error"}  # fmt: skip


class ApiError(Exception):
    """A request that cannot be served as sent; becomes `status` with an OpenAI error body."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}  # fmt: skip

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_rag_error(exc: RagError) -> ApiError:
    """The product's own errors keep their message and hint; the status says whose move it is."""
    message = f"{exc.message} {exc.hint}".strip()
    if isinstance(exc, QuestionError):
        return ApiError(400, message, "invalid_question", "messages")
    if isinstance(exc, IndexStateError):
        return ApiError(503, message, "index_unavailable")
    if isinstance(exc, ModelError):
        return ApiError(503, message, "model_unavailable", "model")
    return ApiError(503, message, "unavailable")


def from_validation(exc: ValidationError | RequestValidationError) -> ApiError:
    """The first problem pydantic found, named by its field: 'messages: Field required'."""
    first = exc.errors()[0] if exc.errors() else {"msg": str(exc), "loc": (), "type": ""}
    if first.get("type") == "json_invalid":
        return ApiError(400, "The request body is not valid JSON. Send a JSON object.", "invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    where = f"{param}: " if param else ""
    return ApiError(400, f"{where}{first.get('msg')}. See docs/api.md for the request fields.", "invalid_request", param)


def install(app: FastAPI) -> None:
    """Route every error raised under /v1 to an OpenAI-style JSON body."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), "http_error", headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.exception("API request failed")
        return ApiError(500, f"The server failed: {type(exc).__name__}. Its log has the details.", "internal").response()
