"""The web application: the status page, its JSON, and Prometheus metrics at /metrics.

Flask (Pallets): a small, well-kept WSGI library with Jinja's escaping on by default; the page needs no
more. Every request is a quick read of the sampler's latest status, so a plain threaded WSGI server
(waitress) serves it.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, Response, jsonify, render_template, request

from web.metrics import exposition
from web.sampler import Sampler

TOKEN_COOKIE = "digits_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(sampler: Sampler, *, token: str = "", title: str = "digits") -> Flask:
    """The application over a running sampler. With a token, every request must carry it: the header
    `Authorization: Bearer <token>`, the cookie the page sets, or once `?token=<token>` in the address
    (which sets that cookie: strict same-site, not readable by scripts)."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64_000)

    def given_token() -> str:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[len("Bearer "):]
        return request.args.get("token") or request.cookies.get(TOKEN_COOKIE) or ""

    @app.before_request
    def check_token() -> Any:
        if token and not hmac.compare_digest(given_token().encode(), token.encode()):
            return Response("a token is needed: open the address `digits web` printed (…/?token=…)\n", status=401,
                            mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if token and request.args.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
        return response

    @app.get("/")
    def status_page() -> str:
        return render_template("status.html", title=title, report=sampler.report())

    @app.get("/api/status")
    def status_json() -> Response:
        return jsonify(sampler.report())

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = exposition(sampler.report())
        return Response(body, content_type=content_type)

    @app.errorhandler(404)
    def not_found(_error) -> Response:
        return Response("not found\n", status=404, mimetype="text/plain")

    return app
