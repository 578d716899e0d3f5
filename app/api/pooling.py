"""The routes of pooling models, as vLLM serves them: /v1/embeddings, /score and /rerank.

Each is a blocking request on the one path (app/gateway.py): keys, limits, admission,
routing to a replica that serves the model, failover, cancellation, metrics and the log
line. Token limits count their input tokens, as the upstream's usage reports them. Sent to
a generative model they get a 400 naming the model and what it serves.
"""
from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.api.docs import GENERATION_HEADERS, error_responses
from app.api.openai import blocking
from app.api.smorest import Blueprint
from app.exchange import INPUT_ONLY
from app.schemas import ApiErrorSchema
from app.schemas_vllm import EmbeddingRequestSchema, RerankRequestSchema, ScoreRequestSchema

blp = Blueprint("pooling", __name__, description="Embeddings and scores of pooling models (vLLM's).")
_ERRORS = error_responses(400, 404, 413, 415, 502, 503, 504)
# vLLM's own aliases of its score and rerank routes: each goes to the same route upstream.
SCORE_ROUTES = ("/score", "/v1/score")
RERANK_ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank")


def _answer(description: str, required: list[str]) -> dict[str, Any]:
    return {"description": description, "headers": GENERATION_HEADERS,
            "content": {"application/json": {"schema": {"type": "object", "required": required}}}}


@blp.route("/v1/embeddings")
class Embeddings(MethodView):
    """Embeddings."""

    @blp.arguments(EmbeddingRequestSchema())
    @blp.doc(responses={"200": _answer("OpenAI's list of embeddings (`data[].embedding`) and `usage`.",
                                       ["data", "usage"]), **_ERRORS})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """Embed texts (OpenAI's and vLLM's /v1/embeddings)."""
        return blocking("/v1/embeddings", body, work=INPUT_ONLY)


class Score(MethodView):
    """Scores of text pairs."""

    @blp.arguments(ScoreRequestSchema())
    @blp.doc(responses={"200": _answer("`data[].score` for each pair, and `usage`.", ["data", "usage"]),
                        **_ERRORS})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """Score the first side against each text of the second (vLLM's /score)."""
        return blocking("/score", body, work=INPUT_ONLY)


class Rerank(MethodView):
    """Documents ranked by relevance."""

    @blp.arguments(RerankRequestSchema())
    @blp.doc(responses={"200": _answer("`results[]` (`index`, `relevance_score`, `document`), best first, and "
                                       "`usage`.", ["results", "usage"]), **_ERRORS})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """Rank documents by their relevance to a query (vLLM's /rerank, Jina's and Cohere's shape)."""
        return blocking("/rerank", body, work=INPUT_ONLY)


for _path in SCORE_ROUTES:
    blp.route(_path, endpoint=f"score{_path.replace('/', '_')}")(Score)
for _path in RERANK_ROUTES:
    blp.route(_path, endpoint=f"rerank{_path.replace('/', '_')}")(Rerank)
