"""POST /tokenize and /detokenize: the model's tokenizer, as vLLM serves it (to count or inspect tokens).

Behind the same keys, limits and admission as the other routes; they spend no tokens of a
key's token limit (a tokenizer does not run the model), but a key over its limit waits for
its window like for any other request.
"""
from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.api.docs import GENERATION_HEADERS, error_responses
from app.api.openai import blocking
from app.api.smorest import Blueprint
from app.exchange import NO_TOKENS
from app.schemas import ApiErrorSchema
from app.schemas_vllm import DetokenizeRequestSchema, TokenizeRequestSchema

blp = Blueprint("tokenize", __name__, description="vLLM's tokenizer routes.")
_ERRORS = error_responses(400, 404, 413, 415, 502, 503, 504)


def _answer(description: str, required: list[str]) -> dict[str, Any]:
    return {"description": description, "headers": GENERATION_HEADERS,
            "content": {"application/json": {"schema": {"type": "object", "required": required}}}}


@blp.route("/tokenize")
class Tokenize(MethodView):
    """Text to token ids."""

    @blp.arguments(TokenizeRequestSchema())
    @blp.doc(responses={"200": _answer("`count`, `max_model_len`, `tokens` (and `token_strs` when asked).",
                                       ["count", "tokens"]), **_ERRORS})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """The token ids of a prompt, or of chat messages rendered with the model's template."""
        return blocking("/tokenize", body, work=NO_TOKENS)


@blp.route("/detokenize")
class Detokenize(MethodView):
    """Token ids to text."""

    @blp.arguments(DetokenizeRequestSchema())
    @blp.doc(responses={"200": _answer("`prompt`: the text of the tokens.", ["prompt"]), **_ERRORS})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """The text that token ids stand for."""
        return blocking("/detokenize", body, work=NO_TOKENS)
