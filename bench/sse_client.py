"""A plain SSE client for tests: records when each event arrived (independent of the gateway's parser)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import requests


@dataclass
class StreamResult:
    """What a client saw of one stream: status, events with arrival times, and the raw body."""

    status: int
    events: list = field(default_factory=list)  # decoded JSON payloads, or "[DONE]"
    times: list = field(default_factory=list)  # seconds since the request was sent
    started: float = 0.0

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    @property
    def text_events(self) -> list:
        return [e for e in self.events if isinstance(e, dict) and e.get("text")]


def events_of(body: bytes) -> list:
    """The data payloads of a whole SSE body, JSON-decoded except [DONE]."""
    out = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream(url: str, body: dict, timeout: float = 60, headers: dict | None = None,
           session: requests.Session | None = None) -> StreamResult:
    """POST `body` (through `session` if given) and read the SSE reply to its end."""
    started = time.monotonic()
    with (session or requests).post(url, json=body, stream=True, timeout=timeout, headers=headers) as reply:
        result = StreamResult(reply.status_code, started=started)
        if reply.status_code != 200:
            result.events.append(reply.json())
            return result
        pending = b""
        for chunk in reply.iter_content(chunk_size=None):
            now = time.monotonic() - started
            pending += chunk
            *blocks, pending = pending.split(b"\n\n")
            for block in blocks:
                if block.startswith(b"data: "):
                    data = block[6:]
                    result.events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
                    result.times.append(now)
    return result
