"""The two apps ``bench/floor.py`` serves to measure what the stack itself costs per request,
with nothing of the broker in them. Both answer ``POST /v1/credentials`` (the wrk script of the
mint) with a 201 and a small JSON body.

- ``raw``: a bare ASGI callable — uvicorn, httptools and uvloop only.
- ``litestar``: one litestar handler taking the mint's body as a msgspec struct and the bearer
  token through a dependency, answering a msgspec struct — what any litestar route costs.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Request, post
from litestar.di import Provide


async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Task(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    purpose: str


class MintIn(msgspec.Struct, forbid_unknown_fields=True):
    task: Task
    issuer: str
    resource: str
    actions: list[str]
    ttl: int


class MintOut(msgspec.Struct):
    lease_id: str
    issuer: str
    expires_in: int


def bearer(request: Request[Any, Any, Any]) -> str:
    return request.headers.get("authorization", "").removeprefix("Bearer ")


@post("/v1/credentials", dependencies={"token": Provide(bearer, sync_to_thread=False)})
async def mint(data: MintIn, token: str) -> MintOut:
    return MintOut(lease_id=data.task.id, issuer=data.issuer, expires_in=data.ttl)


litestar = Litestar([mint], openapi_config=None)
