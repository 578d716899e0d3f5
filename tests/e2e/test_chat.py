"""The model answers sensibly through the gateway: the converted SmolLM2, its chat template, both APIs."""
from __future__ import annotations

import openai
import pytest
import requests

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France?"


def test_chat_through_the_compatible_api_knows_the_capital_of_france(gateway, engine):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model=engine.spec.served_model_name, temperature=0, max_tokens=32,
                                            messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in answer.choices[0].message.content
    assert answer.usage.completion_tokens > 0


def test_native_api_completes_the_sentence_with_paris(gateway):
    reply = requests.post(gateway.url + "/v1/generate", timeout=120, json={
        "prompt": f"Question: {QUESTION}\nAnswer: The capital of France is", "max_tokens": 8, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["text"]
