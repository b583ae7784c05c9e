"""Cross-origin requests from browsers: Azure ML's `--access_control_allow_origins`.

Off unless origins are configured. Preflights are answered by the host itself on every route
(they carry no key, so with auth on they must never reach `run()`); without auth, `OPTIONS
/score` still reaches a raw-mode `run()` as on Azure ML, and the allow headers are added to
whatever it answers.
"""

from __future__ import annotations

from aiohttp import web

_METHODS = "GET, POST, OPTIONS"
_MAX_AGE = "600"


class Cors:
    def __init__(self, origins: list[str]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(origin.rstrip("/") for origin in origins if origin != "*")

    @property
    def enabled(self) -> bool:
        return self._any or bool(self._origins)

    def allowed(self, origin: str | None) -> bool:
        if not origin or not self.enabled:
            return False
        return self._any or origin.rstrip("/") in self._origins

    @staticmethod
    def is_preflight(request: web.Request) -> bool:
        return (
            request.method == "OPTIONS"
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers
        )

    def preflight(self, request: web.Request) -> web.Response:
        """200 either way, as flask-cors answers; only an allowed origin gets the allow headers."""
        response = web.Response(status=200)
        if self.allowed(request.headers.get("Origin")):
            response.headers["Access-Control-Allow-Methods"] = _METHODS
            wanted = request.headers.get("Access-Control-Request-Headers")
            if wanted:
                response.headers["Access-Control-Allow-Headers"] = wanted
            response.headers["Access-Control-Max-Age"] = _MAX_AGE
        return response

    def apply(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if not self.allowed(origin):
            return
        response.headers["Access-Control-Allow-Origin"] = "*" if self._any else origin
        if not self._any:
            response.headers.add("Vary", "Origin")
