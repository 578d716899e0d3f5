"""The simulator's other vLLM routes: Responses (blocking and named-event streams), tokenizer, embeddings, scores.

As vLLM does, one server is one runner: `generate` answers chat, completions and
/v1/responses; `pooling` answers /v1/embeddings, /score and /rerank (and their aliases);
both answer /tokenize and /detokenize. A route its runner does not have is FastAPI's bare
404 `{"detail": "Not Found"}`, and /openapi.json lists the POST routes it has. The answers
have vLLM 0.32's shapes; the numbers are deterministic stand-ins (a character tokenizer,
hash-seeded unit vectors, cosine scores), with usage counted in words like the generations.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.simulator import SimServer, _Conn, _Request

GENERATE_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
POOLING_ROUTES = ("/v1/embeddings", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank")
COMMON_ROUTES = ("/tokenize", "/detokenize")
RUNNERS = ("generate", "pooling")
DIMENSIONS = 8
NOT_FOUND = {"detail": "Not Found"}


def served_routes(runner: str) -> tuple[str, ...]:
    """The POST routes a server of this runner has."""
    return (GENERATE_ROUTES if runner == "generate" else POOLING_ROUTES) + COMMON_ROUTES


def handled_here(path: str, runner: str) -> bool:
    """Whether this module answers a POST to `path` (the simulator's fast path has a generate runner's chat)."""
    fast_path = runner == "generate" and path in ("/v1/chat/completions", "/v1/completions")
    return path in GENERATE_ROUTES + POOLING_ROUTES + COMMON_ROUTES and not fast_path


def openapi_document(runner: str) -> dict[str, Any]:
    """The part of FastAPI's /openapi.json the gateway reads: its paths."""
    return {"openapi": "3.1.0", "info": {"title": "vLLM simulator"},
            "paths": {path: {"post": {"summary": path}} for path in served_routes(runner)}}


class BadRequest(Exception):
    """vLLM's 400 for a body it cannot use."""


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) if not isinstance(item, int) else 1 for item in value)
    if isinstance(value, dict):
        return _words(value.get("content")) + _words(value.get("text"))
    return 0


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, int) for item in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        return [json.dumps(value, sort_keys=True)]
    raise BadRequest("input must be a string, strings, or token ids")


def embedding(text: str) -> list[float]:
    """A unit vector seeded by the text."""
    digest = hashlib.sha256(text.encode()).digest()
    vector = [b - 127.5 for b in digest[:DIMENSIONS]]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def _encoded(vector: list[float], body: dict[str, Any]) -> list[float] | str:
    """As `encoding_format` asks: floats, or base64 of float32 (what the openai package asks for)."""
    if body.get("encoding_format") == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def cosine(a: str, b: str) -> float:
    return round(sum(x * y for x, y in zip(embedding(a), embedding(b), strict=True)), 6)


def _usage(prompt: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0, "prompt_tokens_details": None}


def pooling_answer(path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
    """The JSON answer of a pooling route."""
    created = int(time.time())
    if path == "/v1/embeddings":
        texts = _texts(body.get("input", body.get("messages")))
        return {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": created, "model": model,
                "data": [{"index": i, "object": "embedding", "embedding": _encoded(embedding(t), body)}
                         for i, t in enumerate(texts)],
                "usage": _usage(sum(len(t.split()) for t in texts))}
    if path.endswith("/rerank"):
        query, documents = _texts(body.get("query"))[0], _texts(body.get("documents"))
        ranked = sorted(range(len(documents)), key=lambda i: -cosine(query, documents[i]))
        top = ranked[:body["top_n"]] if body.get("top_n") else ranked
        return {"id": f"rerank-{uuid.uuid4().hex}", "model": model,
                "usage": {"prompt_tokens": _words([query, documents]), "total_tokens": _words([query, documents])},
                "results": [{"index": i, "document": {"text": documents[i], "multi_modal": None},
                             "relevance_score": cosine(query, documents[i])} for i in top]}
    first, second = next(((body[a], body[b]) for a, b in (("text_1", "text_2"), ("queries", "documents"),
                                                          ("queries", "items"), ("data_1", "data_2"))
                          if a in body and b in body), (None, None))
    if first is None:
        raise BadRequest("give text_1 and text_2 (or queries and documents)")
    lefts, rights = _texts(first), _texts(second)
    pairs = [(lefts[0], r) for r in rights] if len(lefts) == 1 else list(zip(lefts, rights, strict=False))
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": created, "model": model,
            "data": [{"index": i, "object": "score", "score": cosine(a, b)} for i, (a, b) in enumerate(pairs)],
            "usage": _usage(_words([first, second]))}


def tokenizer_answer(path: str, body: dict[str, Any], max_model_len: int) -> dict[str, Any]:
    """/tokenize: one token per character (its code point); /detokenize: the inverse."""
    if path == "/detokenize":
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < 0x110000 for t in tokens):
            raise BadRequest("tokens must be a list of token ids")
        return {"prompt": "".join(map(chr, tokens))}
    if isinstance(body.get("prompt"), str):
        text = body["prompt"]
    elif isinstance(body.get("messages"), list):
        text = "".join(f"<|{m.get('role')}|>{m.get('content')}\n" for m in body["messages"] if isinstance(m, dict))
    else:
        raise BadRequest("give prompt or messages")
    tokens = [ord(c) for c in text]
    answer: dict[str, Any] = {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens,
                              "token_strs": None}
    if body.get("return_token_strs"):
        answer["token_strs"] = list(text)
    return answer


def responses_answer(body: dict[str, Any], model: str, words: int) -> tuple[dict[str, Any], list[str]]:
    """The final response object and its output's pieces of text (one a token)."""
    if not isinstance(body.get("input"), (str, list)):
        raise BadRequest("input must be a string or a list of items")
    pieces = [f" tok{i}" for i in range(1, words + 1)]
    prompt = _words(body["input"]) + _words(body.get("instructions"))
    response = {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
                "model": model, "status": "completed", "output": [{
                    "id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "".join(pieces), "annotations": []}]}],
                "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": len(pieces), "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": prompt + len(pieces)}}
    return response, pieces


def _event(name: str, sequence: int, **fields: Any) -> bytes:
    data = json.dumps({"type": name, "sequence_number": sequence, **fields}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


def response_events(response: dict[str, Any], pieces: list[str]) -> list[bytes]:
    """vLLM's named events for a streamed response, in its order: created ... deltas ... completed."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    item_id = response["output"][0]["id"]
    events = [_event("response.created", 0, response=started), _event("response.in_progress", 1, response=started),
              _event("response.output_item.added", 2, output_index=0,
                     item={"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
                           "content": []}),
              _event("response.content_part.added", 3, item_id=item_id, output_index=0, content_index=0,
                     part={"type": "output_text", "text": "", "annotations": []})]
    for piece in pieces:
        events.append(_event("response.output_text.delta", len(events), item_id=item_id, output_index=0,
                             content_index=0, delta=piece, logprobs=[]))
    text = "".join(pieces)
    events.append(_event("response.output_text.done", len(events), item_id=item_id, output_index=0,
                         content_index=0, text=text, logprobs=[]))
    events.append(_event("response.output_item.done", len(events), output_index=0, item=response["output"][0]))
    events.append(_event("response.completed", len(events), response=response))
    return events


async def answer(server: SimServer, conn: _Conn, req: _Request) -> bool:
    """Answer one of these routes (or FastAPI's 404 when the runner lacks it); whether the connection stays."""
    config, close = server.config, not req.keep_alive
    if req.path not in served_routes(config.runner):
        server._write_simple(conn, 404, NOT_FOUND, close)
        return req.keep_alive
    try:
        body = json.loads(req.body)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model") or config.models[0]
        if model not in config.models:
            server._write_simple(conn, 404, server._error_body(404, f"The model `{model}` does not exist."), close)
            return req.keep_alive
        server.stats.requests_total += 1
        if req.path in POOLING_ROUTES:
            server._write_simple(conn, 200, pooling_answer(req.path, body, model), close)
        elif req.path in COMMON_ROUTES:
            server._write_simple(conn, 200, tokenizer_answer(req.path, body, config.max_model_len), close)
        else:
            return await _responses(server, conn, req, body, model)
    except (ValueError, BadRequest) as exc:
        server._write_simple(conn, 400, server._error_body(400, str(exc)), close)
        return req.keep_alive
    server.stats.completed += 1
    return req.keep_alive


async def _responses(server: SimServer, conn: _Conn, req: _Request, body: dict[str, Any], model: str) -> bool:
    """POST /v1/responses: the whole response, or its named events one a token (itl apart)."""
    limit = body.get("max_output_tokens") or 16
    response, pieces = responses_answer(body, model, min(int(limit), server.config.max_tokens_cap))
    close = not req.keep_alive
    if not body.get("stream"):
        server._write_simple(conn, 200, response, close)
    else:
        await server._send(conn, server._head(200, "text/event-stream; charset=utf-8", None, None, close))
        try:
            for event in response_events(response, pieces):
                if server.config.itl > 0 and b"output_text.delta" in event:
                    await asyncio.sleep(server.config.itl)
                await server._send_chunk(conn, event)
        except BaseException:
            if conn.writer.transport.is_closing():  # the client left (the simulator raises its _ClientGone)
                server.stats.cancelled += 1
                server.stats.last_cancel_at = time.time()
            raise
        await server._send(conn, b"0\r\n\r\n")  # no [DONE]: vLLM ends the stream with response.completed
    server.stats.tokens_generated += len(pieces)
    server.stats.completed += 1
    return req.keep_alive
