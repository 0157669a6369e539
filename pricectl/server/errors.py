"""Error responses: every endpoint answers an error as JSON ``{"error", "detail"}``.

``error`` is a short machine-readable code, ``detail`` a sentence for people; no
page, stack trace or address ever leaks (docs/protocol.md lists the 400 codes).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["bad_request", "error_json"]


def bad_request(error: str, detail: str, **extra: Any) -> web.Response:
    """400 with the JSON error body every endpoint uses."""
    body = {"error": error, "detail": detail, **extra}
    return web.json_response(body, status=400)


def error_json(status: int, error: str, detail: str) -> web.Response:
    """A JSON error response (used for 404/405/500 so no page or trace leaks)."""
    return web.Response(
        text=json.dumps({"error": error, "detail": detail}),
        status=status,
        content_type="application/json",
    )
