"""/openapi.json describes what the gateway does: its error shape and this deployment's limits."""
from __future__ import annotations


def test_limits_set_by_settings_are_documented_with_their_values(make_app):
    spec = make_app(MAX_PROMPT_CHARS=100, MAX_TOKENS_LIMIT=7).test_client().get("/openapi.json").json
    request = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert request["prompt"]["maxLength"] == 100 and request["max_tokens"]["maximum"] == 7


def test_the_default_error_is_the_one_error_shape(client):
    spec = client.get("/openapi.json").json
    default = spec["components"]["responses"]["DEFAULT_ERROR"]["content"]["application/json"]["schema"]
    assert default == {"$ref": "#/components/schemas/ApiError"}
    assert set(spec["components"]["schemas"]["ApiError"]["properties"]) == {"error"}
