"""All of vLLM's API through Sluice, against the real engines: the chat model and the embedding model.

The official `openai` package for what it has (responses, embeddings, vLLM's request fields
through extra_body), plain HTTP for vLLM's own routes (tokenize, score).
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from app.access.admission import prompt_estimate
from app.access.keys import FileKeyStore, KeyRing
from bench.processes import Gateway

pytestmark = pytest.mark.e2e

ASK = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]


@pytest.fixture(scope="module")
def client(pair_gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=pair_gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_model(engine) -> str:
    return engine.spec.served_model_name


def test_models_lists_both_engines(client, chat_model):
    assert sorted(m.id for m in client.models.list().data) == sorted([chat_model, "minilm"])


def test_responses_blocking_and_streaming(client, chat_model):
    answer = client.responses.create(model=chat_model, input="What is the capital of France?",
                                     max_output_tokens=16, temperature=0)
    assert answer.output_text and answer.usage.output_tokens <= 16 and answer.usage.input_tokens > 0
    with client.responses.stream(model=chat_model, input="What is the capital of France?", max_output_tokens=16,
                                 temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == answer.output_text, "the same greedy answer, streamed"


def test_embeddings(client):
    result = client.embeddings.create(model="minilm", input=["hello", "a car"])
    assert [len(item.embedding) for item in result.data] == [384, 384]
    assert result.usage.prompt_tokens > 0 and result.model == "minilm"


def test_chat_with_vllms_structured_outputs_and_template_switches(client, chat_model):
    answer = client.chat.completions.create(model=chat_model, messages=ASK, max_tokens=5, temperature=0,
                                            extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert answer.choices[0].message.content in ("yes", "no")
    switched = client.chat.completions.create(model=chat_model, messages=ASK, max_tokens=5, temperature=0,
                                              extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert switched.choices[0].message.content


def test_tokenize_detokenize_round_trip(pair_gateway, chat_model):
    text = "The capital of France is Paris."
    tokens = requests.post(pair_gateway.url + "/tokenize", json={"model": chat_model, "prompt": text}, timeout=60)
    assert tokens.status_code == 200 and tokens.json()["count"] == len(tokens.json()["tokens"]) > 0
    back = requests.post(pair_gateway.url + "/detokenize",
                         json={"model": chat_model, "tokens": tokens.json()["tokens"]}, timeout=60)
    assert back.status_code == 200 and back.json()["prompt"].strip() == text


def test_score(pair_gateway):
    reply = requests.post(pair_gateway.url + "/score", json={"model": "minilm", "text_1": "hello",
                                                             "text_2": ["hi", "car"]}, timeout=60)
    assert reply.status_code == 200, reply.text
    scores = [item["score"] for item in sorted(reply.json()["data"], key=lambda item: item["index"])]
    assert scores[0] > scores[1], "hello is closer to hi than to car"


def test_a_chat_sent_to_the_embedding_model_is_a_clear_4xx(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="minilm", messages=ASK, max_tokens=4)
    assert caught.value.status_code == 400 and caught.value.code == "wrong_model_type"
    assert "Model `minilm` does not serve POST /v1/chat/completions: it is a pooling model" in caught.value.message


SERVED = re.compile(rb"served pid=<(\d+)>")
LIMIT = 60


@pytest.fixture(scope="module")
def limited_pair(engine, embedding_engine, redis_server, tmp_path_factory):
    """Two workers sharing token counts in Redis, keys from a file; key `small` may use LIMIT tokens a minute."""
    folder = tmp_path_factory.mktemp("embedding-limits")
    ring = KeyRing(FileKeyStore(str(folder / "keys.json")), None)
    key, _ = ring.create("small", tpm=LIMIT)
    server = Gateway({"SLUICE_UPSTREAM_URL": f"{engine.spec.url},{embedding_engine.spec.url}",
                      "SLUICE_WORKERS": "2", "SLUICE_REDIS_URL": redis_server.url,
                      "SLUICE_KEYS_FILE": str(folder / "keys.json"),
                      "GUNICORN_CMD_ARGS": "--access-logformat 'served pid=%(p)s'"}, log=folder / "gateway.log")
    yield server, key
    server.stop()


def test_token_limits_count_embedding_inputs_across_two_workers(limited_pair, redis_client):  # redis_client: empty
    server, key = limited_pair

    payload = {"model": "minilm", "input": ["alpha beta gamma"] * 2}

    def embed(_: int) -> requests.Response:
        return requests.post(server.url + "/v1/embeddings", json=payload,
                             headers={"Authorization": f"Bearer {key}", "Connection": "close"}, timeout=60)

    # Which worker accepts a connection is the kernel's choice: send batches until both have
    # answered (refusals count: they are answered by a worker too), so the shared count is shown.
    replies: list[requests.Response] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(10):
            replies += pool.map(embed, range(8))
            if len(replies) >= 16 and len(set(SERVED.findall(server.log_path.read_bytes()))) == 2:
                break
    accepted = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert accepted and refused and len(accepted) + len(refused) == len(replies), [r.text for r in replies]
    assert {r.json()["error"]["code"] for r in refused} == {"token_limit_exceeded"}
    spent = sum(r.json()["usage"]["prompt_tokens"] for r in accepted)
    per_request = accepted[0].json()["usage"]["prompt_tokens"]
    # The real input tokens were counted (no output reserved), shared by both workers: what passed
    # spent about the whole limit. Admission reserves the estimate (characters / 4) and settles to
    # the real count afterwards, so the limit can be passed by at most each admitted request's
    # estimate error (here the tokenizer's count is above the estimate), never by more.
    underestimate = max(1, per_request - prompt_estimate(payload))
    assert LIMIT - 2 * per_request < spent <= LIMIT + len(accepted) * underestimate, (spent, per_request)
    assert len(set(SERVED.findall(server.log_path.read_bytes()))) == 2, "both workers served"
