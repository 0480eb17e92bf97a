"""GET /playground (the page that draws decoding live) and GET /, which links it: static files shipped in
server/static/, served with headers that allow no inline script, no framing and no sniffing. The page holds
no secret: it asks the user for the API key and sends it only in its own requests. Off under
--no-playground (both routes then answer 404)."""
from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from .errors import APIError

router = APIRouter()

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}


@cache
def _read(name: str) -> bytes:
    return (resources.files("d2f.server") / "static" / name).read_bytes()


def _file(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=HEADERS)


@router.get("/", include_in_schema=False)
async def index():
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/playground", include_in_schema=False)
async def playground():
    return _file("playground.html", "text/html; charset=utf-8")


@router.get("/playground/{name}", include_in_schema=False)
async def asset(name: str):
    if name not in ASSETS:
        raise APIError(404, "not found")
    return _file(name, ASSETS[name])
