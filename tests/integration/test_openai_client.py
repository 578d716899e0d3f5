"""The official `openai` package, pointed at Sluice under real gunicorn, works unchanged.

Errors reach its own classes with our status and message; 401 and 429 need a gateway with
API keys, in test_keyed_gateway.py.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from bench.processes import Gateway, Simulator

MODEL = "gpt-4o-mini"  # mapped to the simulator's sim-model
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gateway(simulator, tmp_logs):
    """One gevent worker in front of the simulator, offering it as gpt-4o-mini."""
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_MODEL_MAP": f"{MODEL}=sim-model"},
                 log=tmp_logs / "openai-gateway.log")
    yield gw
    gw.stop()


def client_for(url: str) -> openai.OpenAI:
    # No retries: the tests look at the first answer (the client retries 429 and 5xx by default).
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def client(gateway):
    with client_for(gateway.url) as c:
        yield c


def test_chat(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5)
    assert answer.model == MODEL
    assert answer.choices[0].message.content.split() == ["tok1", "tok2", "tok3", "tok4", "tok5"]
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (6, 5)


def test_chat_streaming(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, stream=True))
    assert {c.model for c in chunks} == {MODEL}
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == [f"tok{i}" for i in range(1, 6)]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks), "usage was not asked for"


def test_completions_and_streaming_with_usage(client):
    answer = client.completions.create(model=MODEL, prompt="one two", max_tokens=3)
    assert answer.choices[0].text == " tok1 tok2 tok3" and answer.usage.total_tokens == 5
    chunks = list(client.completions.create(model=MODEL, prompt="one two", max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}))
    assert [c.choices[0].text for c in chunks[:-1]] == [" tok1", " tok2", " tok3"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_async_client_streams_concurrently(gateway):
    async def run() -> tuple:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
            async def chat() -> str:
                stream = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream])

            async def complete() -> str:
                stream = await client.completions.create(model=MODEL, prompt="x", max_tokens=3, stream=True)
                return "".join([c.choices[0].text async for c in stream])

            blocking = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
            return blocking.choices[0].message.content, *await asyncio.gather(chat(), complete())

    assert asyncio.run(run()) == (" tok1 tok2", " tok1 tok2 tok3 tok4", " tok1 tok2 tok3")


def test_models_lists_the_mapped_names(client):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-5", messages=ASK)
    assert caught.value.status_code == 404 and caught.value.code == "model_not_found"
    assert caught.value.body["message"] == "The model `gpt-5` does not exist; GET /v1/models lists the models."


@pytest.mark.parametrize("bad, param", [({"temperature": 5}, "temperature"),
                                        ({"extra_body": {"top_k": "many"}}, "top_k")])
def test_bad_field_is_unprocessable(client, bad, param):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, **bad)
    assert caught.value.status_code == 422 and caught.value.param == param
    assert caught.value.body["message"].startswith(f"{param}: ")


def test_fields_sluice_does_not_know_go_upstream(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2,
                                            extra_body={"top_q": 1, "structured_outputs": {"choice": ["a", "b"]}})
    assert answer.usage.completion_tokens == 2


def test_no_upstream_is_503(tmp_logs):
    gw = Gateway({"SLUICE_UPSTREAM_URL": ""}, log=tmp_logs / "no-upstream-gateway.log")
    try:
        with client_for(gw.url) as client, pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=MODEL, messages=ASK)
    finally:
        gw.stop()
    assert caught.value.status_code == 503 and caught.value.code == "no_upstream"
    assert "SLUICE_UPSTREAM_URL" in caught.value.body["message"]


@contextmanager
def client_of_faulty_upstream(fault: str, tmp_logs: Path) -> Iterator[openai.OpenAI]:
    """A client of a gateway in front of a simulator injecting `fault` into every generation."""
    sim = Simulator("--fault", fault, log=tmp_logs / f"{fault}-simulator.log")
    gw = Gateway({"SLUICE_UPSTREAM_URL": sim.url}, log=tmp_logs / f"{fault}-gateway.log")
    try:
        with client_for(gw.url) as client:
            yield client
    finally:
        gw.stop()
        sim.stop()


def test_overloaded_upstream_is_503_with_retry_after(tmp_logs):
    with client_of_faulty_upstream("status_503", tmp_logs) as client, \
            pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="sim-model", messages=ASK, stream=True)
    assert caught.value.status_code == 503 and caught.value.code == "upstream_overloaded"
    assert caught.value.response.headers["Retry-After"] == "1"


def test_failure_mid_stream_is_an_api_error(tmp_logs):
    with client_of_faulty_upstream("error_event", tmp_logs) as client, pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="sim-model", messages=ASK, max_tokens=10, stream=True):
            pass
    assert caught.value.code == "upstream_stream_error" and "simulated engine failure" in caught.value.message
