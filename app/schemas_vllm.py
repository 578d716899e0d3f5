"""Schemas of the routes vLLM serves beyond chat and completions: Responses, tokenizer, embeddings, scores.

They follow the compatible API's rules (app/schemas_openai.py): what Sluice knows is checked
(types, bounds, the inputs token limits count), fields it does not know go upstream as
they are, unless SLUICE_UNKNOWN_FIELDS=reject. Shapes as vLLM 0.32 takes them.
"""
from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from app.schemas import ConfiguredMaximum
from app.schemas_openai import MessageSchema, OpenAISchema, PromptField, text_of

ENCODING_FORMATS = ("float", "base64")  # the JSON ones: bytes formats are not JSON answers
# /score takes its two sides under any of these pairs of names.
SCORE_PAIRS = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))


def _model() -> fields.String:
    return fields.String(validate=validate.Length(min=1), metadata={"description": "Model name; GET /v1/models "
                                                                                   "lists them."})


def _chars(value: Any) -> int:
    """Characters of text in an input: strings, lists of them, content parts, chat messages."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        return len(text_of(value.get("content"))) if "content" in value else _chars(value.get("text"))
    return 0


def _check_chars(field_name: str, value: Any) -> None:
    try:
        ConfiguredMaximum("MAX_PROMPT_CHARS", "input length")(_chars(value))
    except ValidationError as exc:
        raise ValidationError({field_name: exc.messages}) from None


class ScoreInputField(fields.Field[Any]):
    """One side of a score: a text, a {"content": [parts]} object, or a list of those."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(i, str) or (isinstance(i, dict) and isinstance(i.get("content"), list))
                         for i in items):
            return value
        raise ValidationError("Must be a text, an object with a `content` list, or a non-empty list of those.")


class ResponsesInputField(fields.Field[Any]):
    """The Responses API's `input`: a text, or a non-empty list of input items (objects)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if (isinstance(value, str) and value) or (
                isinstance(value, list) and value and all(isinstance(item, dict) for item in value)):
            return value
        raise ValidationError("Must be a non-empty string or a non-empty list of input items.")


class ResponsesRequestSchema(OpenAISchema):
    """Body of POST /v1/responses (OpenAI's Responses API, as vLLM serves it)."""

    model = _model()
    input = ResponsesInputField(required=True, metadata={"oneOf": [
        {"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "object"}}]})
    instructions = fields.String()
    max_output_tokens = fields.Integer(validate=[validate.Range(min=1),
                                                 ConfiguredMaximum("MAX_TOKENS_LIMIT", "max_output_tokens")])
    stream = fields.Boolean()
    temperature = fields.Float(validate=validate.Range(min=0, max=2))
    top_p = fields.Float(validate=validate.Range(min=0, max=1, min_inclusive=False))
    tools = fields.List(fields.Dict())
    text = fields.Dict(metadata={"description": "Output format, e.g. {\"format\": {\"type\": \"json_schema\"}}."})
    reasoning = fields.Dict()
    store = fields.Boolean()
    background = fields.Boolean(metadata={"description": "Not through the gateway: it could neither count nor "
                                                         "cancel a response that runs on after the request."})
    priority = fields.Integer()

    @validates_schema(skip_on_field_errors=True)
    def _checks(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("background"):
            raise ValidationError({"background": ["Background responses are not served through the gateway; "
                                                  "send the request without it (stream: true to see progress)."]})
        _check_chars("input", [data["input"], data.get("instructions") or ""])


class TokenizeRequestSchema(OpenAISchema):
    """Body of POST /tokenize: a `prompt`, or chat `messages` (rendered with the model's chat template)."""

    model = _model()
    prompt = fields.String()
    messages = fields.List(fields.Nested(MessageSchema), validate=validate.Length(min=1, error="Must not be empty."))
    add_special_tokens = fields.Boolean()
    return_token_strs = fields.Boolean()
    add_generation_prompt = fields.Boolean()
    continue_final_message = fields.Boolean()
    chat_template_kwargs = fields.Dict(keys=fields.String())
    tools = fields.List(fields.Dict())

    @validates_schema(skip_on_field_errors=True)
    def _prompt_or_messages(self, data: dict[str, Any], **kwargs: Any) -> None:
        given = [name for name in ("prompt", "messages") if data.get(name) is not None]
        if len(given) != 1:
            raise ValidationError({"prompt": ["Give either `prompt` or `messages`."]})
        _check_chars(given[0], data[given[0]])


class DetokenizeRequestSchema(OpenAISchema):
    """Body of POST /detokenize."""

    model = _model()
    tokens = fields.List(fields.Integer(validate=validate.Range(min=0, max=2**63 - 1)), required=True)


class EmbeddingRequestSchema(OpenAISchema):
    """Body of POST /v1/embeddings: texts (or token ids) to embed, or chat `messages`."""

    model = _model()
    input = PromptField(metadata={"description": "A text, texts, token ids or lists of token ids.", "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        {"type": "array", "minItems": 1, "items": {"type": "integer"}},
        {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}]})
    messages = fields.List(fields.Nested(MessageSchema), validate=validate.Length(min=1, error="Must not be empty."))
    encoding_format = fields.String(validate=validate.OneOf(ENCODING_FORMATS))
    dimensions = fields.Integer(validate=validate.Range(min=1))
    user = fields.String()
    truncate_prompt_tokens = fields.Integer(validate=validate.Range(min=-1))
    priority = fields.Integer()

    @validates_schema(skip_on_field_errors=True)
    def _input_or_messages(self, data: dict[str, Any], **kwargs: Any) -> None:
        given = [name for name in ("input", "messages") if data.get(name) is not None]
        if len(given) != 1:
            raise ValidationError({"input": ["Give either `input` or `messages`."]})
        _check_chars(given[0], data[given[0]])


class _ScoringSchema(OpenAISchema):
    """What /score and /rerank share."""

    model = _model()
    truncate_prompt_tokens = fields.Integer(validate=validate.Range(min=-1))
    max_tokens_per_query = fields.Integer(validate=validate.Range(min=0))
    max_tokens_per_doc = fields.Integer(validate=validate.Range(min=0))
    instruction = fields.String()
    chat_template_kwargs = fields.Dict(keys=fields.String())
    use_activation = fields.Boolean()
    priority = fields.Integer()


class ScoreRequestSchema(_ScoringSchema):
    """Body of POST /score: two sides, each one text or several, scored pairwise (text_1 against each text_2)."""

    text_1, text_2 = ScoreInputField(), ScoreInputField()
    queries, documents, items = ScoreInputField(), ScoreInputField(), ScoreInputField()
    data_1, data_2 = ScoreInputField(), ScoreInputField()

    @validates_schema(skip_on_field_errors=True)
    def _one_pair(self, data: dict[str, Any], **kwargs: Any) -> None:
        pairs = [pair for pair in SCORE_PAIRS if all(data.get(side) is not None for side in pair)]
        if len(pairs) != 1:
            names = " or ".join(f"`{a}` and `{b}`" for a, b in SCORE_PAIRS)
            raise ValidationError({"text_1": [f"Give one pair of sides: {names}."]})
        _check_chars(pairs[0][0], [data[side] for side in pairs[0]])


class RerankRequestSchema(_ScoringSchema):
    """Body of POST /rerank: documents ordered by their relevance to a query."""

    query = ScoreInputField(required=True)
    documents = ScoreInputField(required=True)
    top_n = fields.Integer(validate=validate.Range(min=0))

    @validates_schema(skip_on_field_errors=True)
    def _length(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_chars("documents", [data["query"], data["documents"]])
