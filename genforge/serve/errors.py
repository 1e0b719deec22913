"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, so the official
clients raise their typed exceptions (BadRequestError, NotFoundError, RateLimitError, ...).

`APIError` is raised anywhere in the server; `install(app)` answers it, and everything
FastAPI or Starlette would otherwise answer in their own shape (validation errors, unknown
paths, wrong methods, bugs), in this one shape.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("genforge.serve")


class APIError(Exception):
    """An error answered in the OpenAI shape: {"error": {message, type, param, code}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
             503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or self.TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def unsupported(cond: bool, param: str, why: str) -> None:
    """A parameter of OpenAI's API that genforge does not implement: refused, never ignored."""
    if cond:
        raise APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


async def _api_error(request: Request, exc: APIError):
    return exc.response()


async def _validation(request: Request, exc: RequestValidationError):
    """pydantic's first complaint, as `param: message` (one error, naming the field)."""
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        param = None
    msg = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        msg = "unknown parameter"
    elif first.get("type") in ("json_invalid", "model_attributes_type"):
        msg = "the request body must be a JSON object" + (f" ({msg})" if first.get("type") == "json_invalid" else "")
    return APIError(400, f"{param + ': ' if param else ''}{msg}", param=param).response()


async def _http_error(request: Request, exc: StarletteHTTPException):
    msg = {404: f"no such endpoint: {request.method} {request.url.path}",
           405: f"method {request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    return APIError(exc.status_code, msg).response(headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception):
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return APIError(500, f"internal error ({exc.__class__.__name__}); see the server log").response()


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
