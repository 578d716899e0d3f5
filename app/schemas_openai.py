"""Marshmallow schemas of the OpenAI-compatible API: the fields vLLM accepts, checked before they go upstream.

A field the schemas do not know goes upstream unchanged (vLLM takes many of its own:
structured outputs, chat template switches, priorities...), or is rejected with a 422 naming
it, as SLUICE_UNKNOWN_FIELDS says; objects inside a request (messages) follow the same rule.
What the schemas know is checked either way: types, bounds, and what the limits read
(model, prompt, messages, max_tokens). `null` means "not given", as in OpenAI's API.
Tools, tool_choice, response_format and vLLM's structured outputs are checked for shape
only and passed through for the upstream to interpret.
"""
from __future__ import annotations

from typing import Any

from flask import current_app
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.schemas import ConfiguredMaximum, StopField

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema", "structural_tag")
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


class OpenAISchema(Schema):
    """Keeps fields it does not know while loading (they go upstream), and rejects them when set to reject."""

    class Meta:
        unknown = INCLUDE

    def on_bind_field(self, field_name: str, field_obj: fields.Field[Any]) -> None:
        if not field_obj.required:
            field_obj.allow_none = True

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _no_unknown_fields(self, data: dict[str, Any], original_data: Any, **kwargs: Any) -> None:
        if current_app.config["UNKNOWN_FIELDS"] != "reject" or not isinstance(original_data, dict):
            return
        known = {field.data_key or name for name, field in self.load_fields.items()}
        unknown = sorted(set(original_data) - known)
        if unknown:
            raise ValidationError({name: ["Unknown field (SLUICE_UNKNOWN_FIELDS=reject)."] for name in unknown})


def _check_parts(parts: list[Any]) -> None:
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ValidationError("Each content part must be an object with a string `type`.")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise ValidationError("A text content part needs a string `text`.")


class ContentField(fields.Field[Any]):
    """A message's content: a string, or a list of content parts ({"type": "text", "text": ...}, images...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            _check_parts(value)
            return value
        raise ValidationError("Must be a string or a list of content parts.")


def text_of(content: Any) -> str:
    """The text a message's content carries (its text parts joined)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


class PromptField(fields.Field[Any]):
    """A completion prompt: a string, strings, token ids, or lists of token ids, as vLLM takes them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and (
                all(isinstance(p, str) for p in value)
                or all(isinstance(t, int) and not isinstance(t, bool) for t in value)
                or all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in value)):
            return value
        raise ValidationError("Must be a non-empty string, list of strings, or list of token ids.")


class ToolChoiceField(fields.Field[Any]):
    """`tool_choice`: none, auto, required, or an object naming the tool."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value in TOOL_CHOICES or (isinstance(value, dict) and isinstance(value.get("type"), str)):
            return value
        raise ValidationError(f"Must be one of {', '.join(TOOL_CHOICES)}, or an object with a `type`.")


def _response_format(value: dict[str, Any]) -> None:
    if value.get("type") not in RESPONSE_FORMATS:
        raise ValidationError(f"`type` must be one of {', '.join(RESPONSE_FORMATS)}.")


def _typed_objects(value: list[Any]) -> None:
    if not all(isinstance(item, dict) and isinstance(item.get("type"), str) for item in value):
        raise ValidationError("Each item must be an object with a string `type`.")


def _max_tokens() -> fields.Integer:
    return fields.Integer(validate=[validate.Range(min=1), ConfiguredMaximum("MAX_TOKENS_LIMIT", "max_tokens")])


class StreamOptionsSchema(OpenAISchema):
    """`stream_options` of a streaming request."""

    include_usage = fields.Boolean(metadata={"description": "Send a last chunk with the token usage."})
    continuous_usage_stats = fields.Boolean(metadata={"description": "vLLM: usage in every chunk."})


class MessageSchema(OpenAISchema):
    """One chat message."""

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = ContentField(metadata={"description": "A string, or a list of content parts.", "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string"}, "text": {"type": "string"}},
            "description": "A content part; a `text` part needs its `text`."}}]})
    name = fields.String()
    tool_calls = fields.List(fields.Dict(), validate=_typed_objects)
    tool_call_id = fields.String()
    # What clients echo back when they append an assistant reply to the conversation.
    refusal = fields.String()
    reasoning_content = fields.String()
    function_call = fields.Dict()
    audio = fields.Dict()
    annotations = fields.List(fields.Dict())

    @validates_schema(skip_on_field_errors=True)
    def _has_content(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("content") is None and not (data["role"] == "assistant" and data.get("tool_calls")):
            raise ValidationError({"content": ["Missing data for required field."]})


class SamplingSchema(OpenAISchema):
    """The fields completions and chat requests share."""

    model = fields.String(validate=validate.Length(min=1),
                          metadata={"description": "Model name; GET /v1/models lists them."})
    max_tokens = _max_tokens()
    temperature = fields.Float(validate=validate.Range(min=0, max=2))
    top_p = fields.Float(validate=validate.Range(min=0, max=1, min_inclusive=False))
    n = fields.Integer(validate=[validate.Range(min=1), ConfiguredMaximum("MAX_N", "n")])
    stream = fields.Boolean()
    stream_options = fields.Nested(StreamOptionsSchema)
    stop = StopField(metadata={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
    seed = fields.Integer()
    presence_penalty = fields.Float(validate=validate.Range(min=-2, max=2))
    frequency_penalty = fields.Float(validate=validate.Range(min=-2, max=2))
    logit_bias = fields.Dict(keys=fields.String(), values=fields.Float())
    user = fields.String()
    response_format = fields.Dict(validate=_response_format)
    # vLLM's own sampling parameters.
    top_k = fields.Integer(validate=validate.Range(min=-1))
    min_p = fields.Float(validate=validate.Range(min=0, max=1))
    repetition_penalty = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    min_tokens = fields.Integer(validate=validate.Range(min=0))
    ignore_eos = fields.Boolean()
    stop_token_ids = fields.List(fields.Integer())
    skip_special_tokens = fields.Boolean()
    include_stop_str_in_output = fields.Boolean()
    # vLLM's own request fields that clients send most, typed here so that a wrong type is a
    # 422 from Sluice; any other vLLM field goes upstream as it is (SLUICE_UNKNOWN_FIELDS=pass).
    structured_outputs = fields.Dict(metadata={"description": "vLLM: choice, regex, json, grammar... "
                                                              "the output must follow."})
    priority = fields.Integer(metadata={"description": "vLLM: scheduling priority (lower runs first)."})
    prompt_logprobs = fields.Integer(validate=validate.Range(min=-1))
    truncate_prompt_tokens = fields.Integer(validate=validate.Range(min=-1))
    vllm_xargs = fields.Dict(keys=fields.String())
    cache_salt = fields.String(validate=validate.Length(min=1, max=1024))

    @validates_schema(skip_on_field_errors=True)
    def _stream_options_need_stream(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("stream_options") is not None and not data.get("stream"):
            raise ValidationError({"stream_options": ["Only allowed when stream is true."]})


def _check_prompt_chars(field_name: str, total: int) -> None:
    try:
        ConfiguredMaximum("MAX_PROMPT_CHARS", "prompt length")(total)
    except ValidationError as exc:
        raise ValidationError({field_name: exc.messages}) from None


class CompletionRequestSchema(SamplingSchema):
    """Body of POST /v1/completions."""

    prompt = PromptField(required=True, metadata={"description": "Text (or token ids) to continue.", "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        {"type": "array", "minItems": 1, "items": {"type": "integer"}},
        {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}]})
    suffix = fields.String()
    echo = fields.Boolean()
    logprobs = fields.Integer(validate=validate.Range(min=0, max=MAX_LOGPROBS))
    best_of = fields.Integer(validate=[validate.Range(min=1), ConfiguredMaximum("MAX_N", "best_of")])

    @validates_schema(skip_on_field_errors=True)
    def _prompt_length(self, data: dict[str, Any], **kwargs: Any) -> None:
        prompt = data["prompt"]
        texts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
        _check_prompt_chars("prompt", sum(len(t) for t in texts))


class ChatCompletionRequestSchema(SamplingSchema):
    """Body of POST /v1/chat/completions."""

    messages = fields.List(fields.Nested(MessageSchema), required=True,
                           validate=validate.Length(min=1, error="Must not be empty."))
    max_completion_tokens = _max_tokens()
    logprobs = fields.Boolean()
    top_logprobs = fields.Integer(validate=validate.Range(min=0, max=MAX_LOGPROBS))
    tools = fields.List(fields.Dict(), validate=_typed_objects)
    tool_choice = ToolChoiceField(metadata={"oneOf": [{"type": "string", "enum": list(TOOL_CHOICES)},
                                                      {"type": "object"}]})
    parallel_tool_calls = fields.Boolean()
    # vLLM's chat template switches (e.g. {"enable_thinking": false}).
    chat_template_kwargs = fields.Dict(keys=fields.String())
    add_generation_prompt = fields.Boolean()
    continue_final_message = fields.Boolean()
    reasoning_effort = fields.String()

    @validates_schema(skip_on_field_errors=True)
    def _prompt_length(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_prompt_chars("messages", sum(len(text_of(m.get("content"))) for m in data["messages"]))


class ModelSchema(Schema):
    """One entry of GET /v1/models."""

    id = fields.String(metadata={"description": "The name to put in a request's `model`."})
    object = fields.String(metadata={"description": "`model`."})
    created = fields.Integer()
    owned_by = fields.String(metadata={"description": "`sluice` for a mapped name, else the replica's kind."})


class ModelListSchema(Schema):
    """Body of GET /v1/models."""

    object = fields.String(metadata={"description": "`list`."})
    data = fields.List(fields.Nested(ModelSchema))
