"""Marshmallow schemas of the native API: what a request may hold, and what a response holds.

Limits that operators configure (prompt length, max_tokens) are read from the app's config
when a request is validated, so the schema needs no rebuilding per deployment.
"""
from __future__ import annotations

from typing import Any

from flask import current_app
from marshmallow import RAISE, Schema, ValidationError, fields, validate


class ConfiguredMaximum(validate.Validator):
    """A value (or a string's length) must not exceed the setting `setting_name`."""

    def __init__(self, setting_name: str, what: str = "value") -> None:
        self.setting_name = setting_name
        self.what = what

    def __call__(self, value: Any) -> Any:
        limit = current_app.config[self.setting_name]
        measured = len(value) if isinstance(value, str) else value
        if measured > limit:
            raise ValidationError(f"{self.what} must be at most {limit} (setting {self.setting_name}).")
        return value


class StopField(fields.Field[Any]):
    """`stop`: one string, or a list of up to 4 non-empty strings, as OpenAI's API has it."""

    MAX_STOPS = 4

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValidationError("Must be a string or a list of strings.")
        if len(stops) > self.MAX_STOPS:
            raise ValidationError(f"At most {self.MAX_STOPS} stop sequences.")
        if any(s == "" for s in stops):
            raise ValidationError("Stop sequences must not be empty.")
        return stops


class GenerateRequestSchema(Schema):
    """Body of POST /v1/generate and /v1/generate/stream."""

    class Meta:
        unknown = RAISE  # a misspelt field is an error, named in the message

    prompt = fields.String(required=True, validate=[
        validate.Length(min=1, error="Must not be empty."),
        ConfiguredMaximum("MAX_PROMPT_CHARS", "prompt length"),
    ], metadata={"description": "Text to continue."})
    max_tokens = fields.Integer(load_default=256, validate=[
        validate.Range(min=1), ConfiguredMaximum("MAX_TOKENS_LIMIT", "max_tokens"),
    ], metadata={"description": "Most tokens to generate."})
    temperature = fields.Float(load_default=0.7, validate=validate.Range(min=0, max=2),
                               metadata={"description": "Sampling temperature; 0 is greedy."})
    top_p = fields.Float(validate=validate.Range(min=0, max=1, min_inclusive=False),
                         metadata={"description": "Nucleus sampling mass, in (0, 1].", "exclusiveMinimum": True})
    stop = StopField(metadata={"description": "A string or up to 4 strings that end generation.",
                               "oneOf": [{"type": "string", "minLength": 1},
                                         {"type": "array", "items": {"type": "string", "minLength": 1},
                                          "maxItems": StopField.MAX_STOPS}]})
    seed = fields.Integer(validate=validate.Range(min=-2**63, max=2**63 - 1),  # vLLM's bounds: a 64-bit integer
                          metadata={"description": "Seed for reproducible sampling."})
    model = fields.String(validate=validate.Length(min=1),
                          metadata={"description": "Model name; defaults to the gateway's configured model."})


class UsageSchema(Schema):
    """Token counts reported by the upstream."""

    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()


class GenerateResponseSchema(Schema):
    """Body of a successful POST /v1/generate."""

    id = fields.String()
    model = fields.String()
    text = fields.String()
    finish_reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema)


class StreamEventSchema(Schema):
    """One `data:` event of /v1/generate/stream; the last one before [DONE] carries usage."""

    id = fields.String()
    text = fields.String()
    finish_reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema)


class HealthSchema(Schema):
    """Body of GET /healthz."""

    status = fields.String(metadata={"description": "Always `ok` while the process answers."})


class ReadinessSchema(Schema):
    """Body of GET /readyz when the gateway can serve."""

    status = fields.String(metadata={"description": "`ready`."})
    replicas = fields.List(fields.Dict(), metadata={
        "description": "Only for the metrics token's bearer or a loopback client. Each replica: url, kind, "
                       "state (healthy, recovering, ejected), reason, weight, models, "
                       "outstanding requests in this worker, failures by kind, and the load figures read from "
                       "its /metrics (running, waiting, kv_cache_usage)."})


class ErrorDetailSchema(Schema):
    """The inside of an error body."""

    message = fields.String()
    type = fields.String()
    param = fields.String(allow_none=True)
    code = fields.String(allow_none=True)


class ApiErrorSchema(Schema):
    """Every error Sluice returns: {"error": {...}}."""

    error = fields.Nested(ErrorDetailSchema)
