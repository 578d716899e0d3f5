"""Sluice: a Flask gateway in front of GPU inference servers (vLLM, Ollama)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, request

from app import config, errors
from app.errors import UnsupportedMediaType
from app.relay.client_body import BODY_METHODS

API_SPEC = {
    "API_TITLE": "Sluice",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
}


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway: settings (defaults, then SLUICE_* environment, then overrides), then blueprints."""
    app = Flask(__name__)
    settings = config.load(overrides)
    app.config.update(settings)
    app.config.update(API_SPEC)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_BYTES"]

    from app import ledger, upstream
    from app.access import admission, auth, limits, operators, shared_state
    from app.api import generate, health, metrics_endpoint, openai, pooling, responses, tokenize, usage, ws
    from app.api.docs import Api
    from app.observe import instrument, logs, request_id
    from app.relay import after_send, client_body, proxies, shutdown

    # The order of their before_request hooks is the order below: a request's key and request
    # limit are checked before a byte of its body is read.
    logs.init_app(app)
    request_id.init_app(app)
    after_send.init_app(app)
    instrument.init_app(app)
    shared_state.init_app(app)  # Redis, if configured, and its outage policy: before its users below
    ledger.init_app(app)  # the database (keys, usage): before auth and admission, which read it
    auth.init_app(app)  # before limits: they count per key
    limits.init_app(app)
    client_body.init_app(app)
    operators.init_app(app)
    admission.init_app(app)
    upstream.init_app(app)
    shutdown.init_app(app)
    app.before_request(_require_json_body)

    api = Api(app)  # /openapi.json and /docs
    api.register_blueprint(health.blp)
    api.register_blueprint(metrics_endpoint.blp)
    api.register_blueprint(generate.blp)
    api.register_blueprint(openai.blp)
    api.register_blueprint(responses.blp)
    api.register_blueprint(pooling.blp)
    api.register_blueprint(tokenize.blp)
    api.register_blueprint(usage.blp)
    ws.init_app(app, api.spec)
    api.document_security(app)  # last: it amends the routes registered above
    errors.register(app)  # after Api(): replaces flask-smorest's own error handler
    proxies.init_app(app)  # last: the outermost WSGI layer, so every layer sees the client's address
    return app


def _require_json_body() -> None:
    """415 for a body that is not JSON, before validation would call it a missing field."""
    if request.method in BODY_METHODS and not request.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json.")
