"""Which API routes each replica serves: a generative model answers chat, a pooling model embeddings and scores.

vLLM registers only the routes its model's runner supports, and its /v1/models does not say
which runner that is, so the health checks read the replica's own OpenAPI document once (its
`paths`). Ollama's routes are known without asking; other OpenAI-compatible servers are not
asked (unknown: every route is tried, and the upstream's answer decides). A request sent to
a model whose replicas do not serve its route gets a 400 naming the model and what it serves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.errors import ApiError, InvalidRequest, NotFound

if TYPE_CHECKING:  # replicas.py imports this module
    from app.upstream.replicas import Client

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
POOLING_ROUTES = ("/v1/embeddings", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank")
# Routes whose absence says nothing about the model (every vLLM serves them).
_COMMON_ROUTES = ("/tokenize", "/detokenize")
# Kinds whose routes are fixed by the client that speaks to them (app/upstream/ollama.py).
FIXED_ROUTES: dict[str, frozenset[str]] = {"ollama": frozenset(("/v1/chat/completions", "/v1/completions"))}
DISCOVERED_KINDS = frozenset(("vllm",))
FASTAPI_NOT_FOUND = "Not Found"  # the body of a route FastAPI does not have: {"detail": "Not Found"}


def served_routes(client: Client) -> frozenset[str]:
    """The POST routes in a vLLM replica's /openapi.json."""
    document: Any = client.get_json("/openapi.json")
    paths = document.get("paths") if isinstance(document, dict) else None
    if not isinstance(paths, dict):
        return frozenset()
    return frozenset(path for path, operations in paths.items()
                     if isinstance(operations, dict) and "post" in operations)


def describe(routes: frozenset[str]) -> str:
    """What a replica serving `routes` is for, in words, with the routes that say so."""
    generation = [r for r in GENERATION_ROUTES if r in routes]
    pooling = [r for r in POOLING_ROUTES if r in routes]
    kinds = []
    if generation:
        kinds.append(f"a generative model ({', '.join(generation)})")
    if pooling:
        kinds.append(f"a pooling model ({', '.join(pooling)})")
    return " and ".join(kinds) or f"none of the model routes ({', '.join(sorted(routes)) or 'no routes'})"


def wrong_route(model: str, path: str, routes: frozenset[str] | None) -> InvalidRequest:
    """The 400 for a request to `path` that the replicas of `model` do not serve."""
    served = f"it is {describe(routes)}" if routes is not None else "its server has no such route"
    return InvalidRequest(f"Model `{model}` does not serve POST {path}: {served}.", param="model",
                          code="wrong_model_type")


def explain_missing_route(exc: ApiError, model: str, path: str) -> ApiError:
    """A replica's bare 404 for the route itself (not for the model) as wrong_route; other errors unchanged."""
    if isinstance(exc, NotFound) and exc.message == FASTAPI_NOT_FOUND and path not in _COMMON_ROUTES:
        return wrong_route(model, path, None)
    return exc
