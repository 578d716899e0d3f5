"""The OpenAPI document (/openapi.json) and the interactive docs (/docs), served without any CDN.

flask-smorest documents the blueprints' routes from their schemas. This module adds what it
does not: our error shape for every error status, Swagger UI's files served by the gateway
itself (the swagger-ui-bundle package), its own routes, and how streams are framed.
"""
from __future__ import annotations

import http
from typing import Any

import flask_smorest
from flask import Flask, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from app.access.auth import OPEN_PATHS
from app.api.smorest import Blueprint
from app.config import authentication_required
from app.schemas import ApiErrorSchema, ConfiguredMaximum, StreamEventSchema

ASSETS_URL = "/docs/assets/"
_DESCRIPTION = (
    "Text generation in front of vLLM (or any OpenAI-compatible server). Every error has one shape, "
    "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. Streams are Server-Sent Events "
    "that always end with `data: [DONE]` (the Responses API's named events end with `response.completed`, "
    "as vLLM's do); an error after the first byte is sent as an error event. "
    "Every response carries `X-Request-ID` (yours when well-formed, else a new one)."
)
SETTINGS = {
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": ASSETS_URL,  # the page loads swagger-ui-bundle.js etc. from here
    "API_SPEC_OPTIONS": {"info": {"description": _DESCRIPTION}},
}

assets = Blueprint("docs", __name__, description="Interactive API documentation.")


@assets.route(ASSETS_URL + "<path:filename>")
@assets.doc(responses={"200": {"description": "A Swagger UI file (JavaScript, CSS, image)."},
                       "404": "NOT_FOUND"})
def swagger_ui_asset(filename: str) -> Response:
    """A file of Swagger UI, for the /docs page."""
    return send_from_directory(swagger_ui_path, filename)


class Api(flask_smorest.Api):
    """flask-smorest's Api with our error shape, local Swagger UI, and its own routes documented."""

    ERROR_SCHEMA = ApiErrorSchema

    def init_app(self, app: Flask, **kwargs: Any) -> None:
        for name, value in SETTINGS.items():
            app.config.setdefault(name, value)
        super().init_app(app, **kwargs)
        self.register_blueprint(assets)
        self.spec.components.schema("StreamEvent", schema=StreamEventSchema)
        # flask-smorest serves these two itself but leaves them out of the document.
        self._document_configured_limits(app)
        self._document_rule(app, "openapi_json", {
            "summary": "This OpenAPI 3 document.", "tags": ["docs"],
            "responses": {"200": {"description": "The document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}}})
        self._document_rule(app, "openapi_swagger_ui", {
            "summary": "Interactive documentation (Swagger UI) of this API.", "tags": ["docs"],
            "responses": {"200": {"description": "An HTML page.",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}}})

    def document_security(self, app: Flask) -> None:
        """Declare the bearer tokens this deployment requires, once every route is registered.

        Whether /metrics or the API needs a token is a setting, so the document says so only
        when it is on: a client (or a fuzzer) reading it must not expect a 401 that never comes.
        """
        paths = self.spec._paths  # apispec keeps them here; there is no public accessor to amend one
        if app.config["METRICS_TOKEN"]:
            self.spec.components.security_scheme("metricsToken", {
                "type": "http", "scheme": "bearer", "description": "SLUICE_METRICS_TOKEN."})
            _require(paths["/metrics"], "metricsToken")
        else:
            for operation in paths["/metrics"].values():
                operation["responses"].setdefault("403", {
                    "description": "A client not on loopback (no SLUICE_METRICS_TOKEN is set).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}})
        if authentication_required(app.config):
            self.spec.components.security_scheme("apiKey", {
                "type": "http", "scheme": "bearer", "description": "An API key made by `sluice keys create`."})
            for path, operations in paths.items():
                if path not in OPEN_PATHS and not path.startswith("/docs/"):
                    _require(operations, "apiKey")

    def _document_configured_limits(self, app: Flask) -> None:
        """Limits set by settings (ConfiguredMaximum) appear in the document with this deployment's values."""
        settings = app.config

        def configured_maximum(converter: Any, field: Any, ret: dict[str, Any]) -> dict[str, Any]:
            limits = [v for v in field.validators if isinstance(v, ConfiguredMaximum)]
            if not limits:
                return {}
            key = "maxLength" if ret.get("type") == "string" else "maximum"
            return {key: min(settings[limit.setting_name] for limit in limits)}

        self.ma_plugin.converter.add_attribute_function(configured_maximum)

    def _document_rule(self, app: Flask, endpoint: str, operation: dict[str, Any]) -> None:
        [rule] = app.url_map.iter_rules(f"{self._make_doc_blueprint_name()}.{endpoint}")
        self.spec.path(rule=rule, operations={"get": operation})


def _require(operations: dict[str, Any], scheme: str) -> None:
    """Mark every operation of a path as needing `scheme`, with its 401 answer."""
    for operation in operations.values():
        if isinstance(operation, dict) and "responses" in operation:
            operation["security"] = [{scheme: []}]
            operation["responses"].setdefault("401", {
                "description": "Missing or wrong bearer token.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}})


# Headers of every generation response (the request id, and the gateway's own time).
GENERATION_HEADERS = {
    "X-Request-ID": {"description": "The request's id: the client's X-Request-ID when well-formed, else a "
                                    "new one. Sent upstream and written in every log line of the request.",
                     "schema": {"type": "string"}},
    "X-Sluice-Overhead-Ms": {"description": "Milliseconds the gateway spent on this request outside the "
                                            "upstream, up to the response headers.",
                             "schema": {"type": "number"}},
}


def error_responses(*statuses: int) -> dict[str, str]:
    """Responses for `blp.doc(responses=...)`: each status refers to its component, of our error shape."""
    return {str(status): http.HTTPStatus(status).name for status in statuses}


def sse_response(description: str, event_schema: str, example: str) -> dict[str, Any]:
    """The OpenAPI response of a Server-Sent Events stream of `event_schema` payloads, ended by [DONE]."""
    return {
        "description": description,
        "headers": GENERATION_HEADERS,
        "content": {"text/event-stream": {
            # OpenAPI 3.0 has `schema` describe one event of the stream (as 3.2's itemSchema does).
            "schema": {"type": "object", "required": ["data"], "description": "One event: `data: <JSON>` and "
                       "a blank line; the last is `data: [DONE]`.",
                       "properties": {"data": {"type": "string", "description": "A JSON object, or `[DONE]`."}}},
            "example": example,
            # OpenAPI 3.0 cannot type the events of a stream; this extension names their schemas.
            "x-sse-data": {"oneOf": [{"$ref": f"#/components/schemas/{event_schema}"},
                                     {"$ref": "#/components/schemas/ApiError"}]},
        }},
    }
