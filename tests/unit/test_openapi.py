"""The OpenAPI document: valid OpenAPI 3, every route documented with its schemas, and /docs served locally."""
from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

_IGNORED_METHODS = {"HEAD", "OPTIONS"}


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: /docs/assets/<path:filename> -> /docs/assets/{filename}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@pytest.fixture
def spec(client):
    reply = client.get("/openapi.json")
    assert reply.status_code == 200
    return reply.json


def test_document_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_route_and_method_is_documented(app, spec):
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = spec["paths"].get(openapi_path(rule.rule), {})
        missing += [f"{method} {rule.rule}" for method in sorted(rule.methods - _IGNORED_METHODS)
                    if method.lower() not in path]
    assert not missing, f"routes missing from /openapi.json: {missing}"


def test_generation_endpoints_document_request_response_and_errors(spec):
    for path in ("/v1/generate", "/v1/generate/stream"):
        operation = spec["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/GenerateRequest")
        for status in ("400", "413", "415", "422", "502", "503", "504"):
            assert status in operation["responses"], f"{path} does not document {status}"
    error_schema = spec["components"]["responses"]["BAD_GATEWAY"]["content"]["application/json"]["schema"]
    assert error_schema["$ref"].endswith("/ApiError")


def test_stream_format_is_described(spec):
    ok = spec["paths"]["/v1/generate/stream"]["post"]["responses"]["200"]
    media = ok["content"]["text/event-stream"]
    assert "data: [DONE]" in media["example"] and "[DONE]" in ok["description"]
    assert {"$ref": "#/components/schemas/StreamEvent"} in media["x-sse-data"]["oneOf"]
    assert "StreamEvent" in spec["components"]["schemas"]
    assert "X-Request-ID" in ok["headers"] and "X-Sluice-Overhead-Ms" in ok["headers"]


def test_docs_page_loads_swagger_ui_from_the_gateway(client):
    page = client.get("/docs").data.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert urls and all(url.startswith("/docs/assets/") for url in urls), urls
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.data) > 1000, url
    assert client.get("/docs/assets/no-such-file.js").status_code == 404
