"""The web application: the status page, its JSON, and Prometheus metrics at /metrics.

Flask (Pallets): a small, well-kept WSGI library with Jinja's escaping on by default; the page needs no
more. Every request is a quick read of the sampler's latest status, so a plain threaded WSGI server
(waitress) serves it.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, request, send_file
from redis.exceptions import RedisError

from core import protocol
from web import review
from web.metrics import exposition
from web.sampler import Sampler
from web.thumbnails import Thumbnails

TOKEN_COOKIE = "digits_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(sampler: Sampler, *, client, results: Path, template_folder: Path, thumbnails: Thumbnails,
               token: str = "", title: str = "digits") -> Flask:
    """The application over a running sampler, the service's Redis (`client`) and results folder. With a
    token, every request must carry it: the header `Authorization: Bearer <token>`, the cookie the page
    sets, or once `?token=<token>` in the address (which sets that cookie: strict same-site, not readable by
    scripts). Changes are POSTs of JSON carrying the page's own CSRF token in a header, from this origin."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64_000)
    csrf = secrets.token_urlsafe(24)

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

    @app.before_request
    def check_origin() -> Any:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = request.headers.get("Origin")
        if (not hmac.compare_digest(request.headers.get("X-CSRF-Token", "").encode(), csrf.encode())
                or (origin is not None and origin != request.host_url.rstrip("/")) or not request.is_json):
            return Response("refused: not a request of this page\n", status=403, mimetype="text/plain")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if token and request.args.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
        return response

    @app.get("/")
    def status_page() -> str:
        return render_template("status.html", title=title, report=sampler.report())

    @app.get("/review")
    def review_page() -> str:
        return render_template("review.html", title=title, csrf=csrf)

    @app.get("/api/review")
    def review_queue() -> Response:
        return jsonify(review.pending(client, results))

    @app.get("/api/review/crop")
    def review_crop() -> Response:
        try:
            return send_file(review.crop_path(results, request.args.get("item", ""), request.args.get("field", "")),
                             mimetype="image/png")
        except review.ReviewError as error:
            return Response(f"{error}\n", status=error.status, mimetype="text/plain")

    @app.post("/api/review")
    def review_decision() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not all(isinstance(body.get(key, ""), str)
                                                 for key in ("item", "action", "digits", "by")):
            return jsonify(error="send {item, action, digits, by} (a form: {item, fields, by}) as JSON"), 400
        try:
            if isinstance(body.get("fields"), dict):
                answer = review.decide_form(client, results, template_folder, body.get("item", ""),
                                            values=body["fields"], by=body.get("by", ""), at=protocol.now_iso())
            else:
                answer = review.decide(client, results, body.get("item", ""), action=body.get("action", ""),
                                       digits=body.get("digits", ""), by=body.get("by", ""), at=protocol.now_iso())
        except review.ReviewError as error:
            return jsonify(error=str(error)), error.status
        sampler.sample()  # the counts move at once
        return jsonify(answer)

    @app.get("/api/thumbnail")
    def thumbnail() -> Response:
        try:
            page, number = int(request.args.get("page", "")), int(request.args.get("number", ""))
        except ValueError:
            page = number = -1
        made = thumbnails.png(request.args.get("source", ""), page, number) if min(page, number) >= 0 else None
        if made is None:
            return Response("no thumbnail\n", status=404, mimetype="text/plain")
        return Response(made, mimetype="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/status")
    def status_json() -> Response:
        return jsonify(sampler.report())

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = exposition(sampler.status())
        return Response(body, content_type=content_type)

    @app.errorhandler(RedisError)
    def redis_away(error) -> Response:
        return Response(f"Redis is unreachable: {error}\n", status=503, mimetype="text/plain")

    @app.errorhandler(404)
    def not_found(_error) -> Response:
        return Response("not found\n", status=404, mimetype="text/plain")

    return app
