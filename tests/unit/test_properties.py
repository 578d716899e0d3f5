"""Properties, checked on generated inputs (Hypothesis): the SSE parser is blind to how the network
splits a stream, and the native request schema accepts every valid body and answers every
other one with a 4xx in the one error shape, never a 500."""
from __future__ import annotations

import json

import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.upstream.sse import SSEParser
from tests.conftest import UPSTREAM

# --- the SSE parser ---------------------------------------------------------------------

# A data line's value: anything but the line breaks that would end it.
line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30)
line_end = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def sse_streams(draw) -> tuple[bytes, list[bytes]]:
    """A valid event stream and the data payloads a parser must find in it."""
    out, expected = [], []
    for _ in range(draw(st.integers(1, 8))):
        end = draw(line_end)
        kind = draw(st.sampled_from(["data", "multiline", "comment", "named"]))
        if kind == "comment":  # a heartbeat: no data, no event
            out.append(f": {draw(line_text)}{end}{end}")
            continue
        values = draw(st.lists(line_text, min_size=1, max_size=3 if kind == "multiline" else 1))
        head = f"event: {draw(line_text)}{end}" if kind == "named" else ""
        # "data:value" and "data: value" are the same field: one space after the colon is dropped.
        lines = [f"data:{draw(st.sampled_from(['', ' ']))}{v}" for v in values]
        out.append(head + "".join(line + end for line in lines) + end)
        expected.append("\n".join(line[6:] if line.startswith("data: ") else line[5:] for line in lines).encode())
    return "".join(out).encode(), expected


@given(sse_streams(), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_split_of_a_valid_stream_parses_to_the_same_events(stream_and_events, data):
    stream, expected = stream_and_events
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    parser = SSEParser()
    assert [event for piece in pieces for event in parser.feed(piece)] == expected
    assert not parser.has_pending


# --- the native request schema ----------------------------------------------------------

COMPLETION = {"id": "cmpl-1", "object": "text_completion", "model": "sim-model",
              "choices": [{"index": 0, "text": " hi", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=50)
valid_bodies = st.fixed_dictionaries({"prompt": text}, optional={
    "max_tokens": st.integers(1, 4096),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1, exclude_min=True),
    "stop": st.one_of(text, st.lists(text, max_size=4)),
    "seed": st.integers(-2**63, 2**63 - 1),
    "model": text,
})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# A valid body with one field replaced by anything, an unknown field added, or anything at all.
any_bodies = st.one_of(
    st.builds(lambda body, key, value: {**body, key: value}, valid_bodies,
              st.sampled_from(["prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "model", "extra"]),
              json_values),
    json_values,
)


@given(valid_bodies)
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_valid_bodies_are_accepted(client, body):
    with responses.RequestsMock() as upstream:
        upstream.post(f"{UPSTREAM}/v1/completions", json=COMPLETION)
        reply = client.post("/v1/generate", json=body)
        assert reply.status_code == 200, reply.json
        assert json.loads(upstream.calls[0].request.body)["prompt"] == body["prompt"]


@given(any_bodies)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_body_is_accepted_or_refused_with_a_4xx_never_a_500(client, body):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        upstream.post(f"{UPSTREAM}/v1/completions", json=COMPLETION)
        reply = client.post("/v1/generate", data=json.dumps(body), content_type="application/json")
    if reply.status_code == 200:
        return  # the replaced value happened to be valid
    assert reply.status_code in (400, 422), reply.json
    error = reply.json["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
