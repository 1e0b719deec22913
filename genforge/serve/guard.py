"""What every request passes before any route: the API key and the body-size limit."""
from __future__ import annotations

import hmac

from genforge.serve.errors import APIError


# the generated API documents list every served model id and parameter, so with a key set
# they are as private as /v1/* (the playground page at / stays open: it asks for the key)
DOC_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


def needs_key(path: str) -> bool:
    return path.startswith("/v1/") or path in DOC_PATHS


class Guard:
    """ASGI middleware, before any route: the API key on /v1/* and the API documents, and the
    body-size limit (the body is read here, at most max_body_bytes of it, and replayed to the
    route)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def refuse(err: APIError):
            await err.response()(scope, receive, send)

        if self.api_key and needs_key(scope["path"]):
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if not auth.strip():
                return await refuse(APIError(401, "missing API key: send the header "
                                             "'Authorization: Bearer <key>'", code="invalid_api_key"))
            # constant-time comparison: the time taken says nothing about how much of a guess matched
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     self.api_key.encode()):
                return await refuse(APIError(401, "incorrect API key", code="invalid_api_key"))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body larger than {self.max_body} bytes; send less",
                           code="request_too_large")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await refuse(too_big)
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if len(body) > self.max_body:
                return await refuse(too_big)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
