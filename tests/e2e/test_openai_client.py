"""The official `openai` package, unchanged, against Sluice in front of the real vLLM."""
from __future__ import annotations

import asyncio

import openai
import pytest

from app.access.keys import FileKeyStore, KeyRing
from bench.processes import Gateway

pytestmark = pytest.mark.e2e

ASK = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(engine) -> str:
    return engine.spec.served_model_name


def test_models_lists_the_engines_model(client, model):
    assert [m.id for m in client.models.list().data] == [model]


def test_chat_blocking_and_streaming(client, model):
    answer = client.chat.completions.create(model=model, messages=ASK, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content and answer.usage.completion_tokens <= 8
    chunks = list(client.chat.completions.create(model=model, messages=ASK, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content, "the stream carries the same greedy answer"
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_completions_blocking_and_streaming(client, model):
    answer = client.completions.create(model=model, prompt="One, two, three,", max_tokens=6, temperature=0)
    pieces = [c.choices[0].text for c in client.completions.create(
        model=model, prompt="One, two, three,", max_tokens=6, temperature=0, stream=True) if c.choices]
    assert len(pieces) > 1 and "".join(pieces) == answer.choices[0].text


def test_async_client(gateway, model):
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
            async def one(prompt: str) -> str:
                answer = await client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0)
                return answer.choices[0].text

            return await asyncio.gather(one("Red, green,"), one("Monday, Tuesday,"))

    assert all(run_text for run_text in asyncio.run(run()))


def test_error_classes(client, model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=ASK)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model=model, messages=ASK, temperature=5)
    assert "temperature" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # vLLM's own check, passed on
        client.completions.create(model=model, prompt="x " * 3000, max_tokens=16)
    assert "context" in caught.value.message or "length" in caught.value.message


@pytest.fixture(scope="module")
def keyed_gateway(engine, tmp_path_factory):
    """A gateway with API keys: one key limited to 2 requests a minute."""
    folder = tmp_path_factory.mktemp("keys")
    keys_file = folder / "keys.json"
    key, _ = KeyRing(FileKeyStore(str(keys_file)), None).create("e2e", rpm=2)
    server = Gateway({"SLUICE_UPSTREAM_URL": engine.spec.url, "SLUICE_KEYS_FILE": str(keys_file)},
                     log=folder / "gateway.log")
    yield server, key
    server.stop()


def test_authentication_and_rate_limit_errors(keyed_gateway, model):
    server, key = keyed_gateway
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key=key[:-1] + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=model, prompt="Hi", max_tokens=2)
    right = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    for _ in range(2):
        assert right.completions.create(model=model, prompt="Hi", max_tokens=2).choices
    with pytest.raises(openai.RateLimitError) as caught:
        right.completions.create(model=model, prompt="Hi", max_tokens=2)
    assert caught.value.response.headers["Retry-After"]
