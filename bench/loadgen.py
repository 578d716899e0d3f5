"""Load generator: blocking requests at fixed concurrency, N concurrent streams, cancellation trials.

Each measurement also samples the processes under test (resident memory, CPU time) and
the load side's own CPU (this process and the simulator), so a result says when the
client, not the proxy, was the limit. `python -m bench.loadgen --help` runs one by hand.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bench import stats
from bench.httpclient import Connection, build_request
from bench.sampler import Sampler, Usage, measure
from bench.simulator import raise_fd_limit

try:  # the load side shares one core with the simulator: the faster loop, when installed
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

T = TypeVar("T")

BURST_GAP = 0.002  # two tokens closer than this arrived together: a burst, not one by one
GAP_BIN = 0.0005  # the gap distribution is kept as a histogram of 0.5 ms bins up to 100 ms
GAP_BINS = 200
STALL_GRACE = 10.0  # seconds a blocking request may still take once its measurement has ended


@dataclass(frozen=True)
class Api:
    """The shape of a generation request on one API surface."""

    name: str
    path: str
    stream_path: str
    vllm_shaped: bool  # OpenAI/vLLM body (model, stream, stream_options) rather than Sluice's native one

    def body(self, max_tokens: int, stream: bool, model: str = "sim-model") -> dict[str, Any]:
        """A deterministic request for `max_tokens` tokens."""
        body: dict[str, Any] = {"prompt": "Benchmark the gateway", "max_tokens": max_tokens, "temperature": 0}
        if self.vllm_shaped:
            body.update(model=model, stream=stream)
            if stream:  # what Sluice asks the upstream for too, so that both sides carry the same bytes
                body["stream_options"] = {"include_usage": True}
        return body


COMPLETIONS = Api("completions", "/v1/completions", "/v1/completions", vllm_shaped=True)
NATIVE = Api("native", "/v1/generate", "/v1/generate/stream", vllm_shaped=False)
APIS = {api.name: api for api in (COMPLETIONS, NATIVE)}


@dataclass(frozen=True)
class Endpoint:
    """Where the load goes, on which API, and with which extra headers (an API key)."""

    host: str
    port: int
    api: Api
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, max_tokens: int, stream: bool) -> bytes:
        """Prepared bytes of one generation request."""
        path = self.api.stream_path if stream else self.api.path
        return build_request("POST", self.host, self.port, path, self.api.body(max_tokens, stream), self.headers)


@dataclass(frozen=True)
class Watch:
    """Processes sampled during a measurement: those under test (with their children), and the load side
    (the client and the upstream, without children: the client process started the proxies)."""

    target_pids: list[int]
    client_pids: list[int]


@dataclass
class BlockingResult:
    """One level of a concurrency sweep."""

    concurrency: int
    requests: int  # answered with 200
    errors: int
    seconds: float
    p50: float
    p90: float
    p99: float
    mean: float
    cpu_us_per_request: float  # CPU time of the processes under test per completed request
    client_cpu_share: float  # CPU time of the load side (client + upstream) per wall second
    error_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class StreamsResult:
    """N streams opened at once and read to their end."""

    count: int
    completed: int
    errors: dict[str, int]
    ttft_p50: float
    ttft_p99: float
    gap_p10: float
    gap_p50: float
    gap_p90: float
    gap_p99: float
    burst_share: float  # share of token gaps under BURST_GAP
    e2e_p50: float
    e2e_p99: float
    token_events: int
    rss_before: int
    rss_peak: int
    cpu_us_per_event: float  # CPU time of the processes under test per relayed token event
    client_cpu_share: float
    # Every stream had its first token before the first one ended: at the peak, all of them were
    # open in the proxy at once (else RSS per stream divides by streams that were not all there).
    open_together: bool = False
    gap_histogram: list[int] = field(repr=False, default_factory=list)  # GAP_BIN wide bins, last: beyond

    @property
    def rss_per_stream(self) -> float:
        """Resident bytes added per open stream: (peak - before) / streams; NaN when nothing was sampled."""
        return (self.rss_peak - self.rss_before) / self.count if self.count and self.rss_before else math.nan


class _Load:
    """Start/stop accounting shared by the measurements: samplers of both sides and wall time."""

    def __init__(self, watch: Watch) -> None:
        self.target = Sampler(watch.target_pids)
        self.client_pids = watch.client_pids
        self.started = 0.0
        self._client_cpu = 0.0

    def start(self) -> None:
        self.target.start()
        self._client_cpu = measure(self.client_pids, descendants=False)[1]
        self.started = perf_counter()

    async def stop(self) -> tuple[float, Usage, float]:
        """(wall seconds, target usage, client CPU share); the usage is NaN when there is no target (no proxy)."""
        seconds = perf_counter() - self.started
        client_cpu = measure(self.client_pids, descendants=False)[1] - self._client_cpu
        usage = await self.target.stop()
        if not self.target.pids:
            usage = Usage(0, 0, math.nan)
        return seconds, usage, client_cpu / seconds if seconds else 0.0


async def blocking(endpoint: Endpoint, concurrency: int, tokens: int, warmup: float, duration: float,
                   watch: Watch) -> BlockingResult:
    """`concurrency` clients, each sending its next request as soon as the last is answered.

    Latencies are those of successful requests; failures are counted by reason.
    """
    request = endpoint.request(tokens, stream=False)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    measuring = stopping = False

    async def client() -> None:
        connection = Connection(endpoint.host, endpoint.port)
        try:
            while not stopping:
                sent = perf_counter()
                try:
                    status, _ = await connection.roundtrip(request)
                    failure = None if status == 200 else f"status {status}"
                except (OSError, asyncio.IncompleteReadError) as exc:
                    failure = type(exc).__name__
                    connection.close()
                if not measuring:
                    continue
                if failure is None:
                    latencies.append(perf_counter() - sent)
                else:
                    errors[failure] = errors.get(failure, 0) + 1
        finally:
            connection.close()

    load = _Load(watch)
    clients = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    load.start()
    await asyncio.sleep(duration)
    measuring = False
    seconds, usage, client_share = await load.stop()
    stopping = True
    # A proxy that stalls must not stall the benchmark: requests still unanswered after a
    # grace period are abandoned and counted.
    _, stalled = await asyncio.wait(clients, timeout=STALL_GRACE)
    for task in stalled:
        task.cancel()
    await asyncio.gather(*stalled, return_exceptions=True)
    if stalled:
        errors[f"unanswered {STALL_GRACE:g} s after the end"] = len(stalled)
    done = len(latencies)
    return BlockingResult(
        concurrency=concurrency, requests=done, errors=sum(errors.values()), seconds=seconds,
        p50=stats.percentile(latencies, 50), p90=stats.percentile(latencies, 90),
        p99=stats.percentile(latencies, 99), mean=sum(latencies) / len(latencies) if latencies else 0.0,
        cpu_us_per_request=usage.cpu_seconds / done * 1e6 if done else math.nan, client_cpu_share=client_share,
        error_reasons=errors)


@dataclass
class _Stream:
    """What one client saw of one stream."""

    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0
    error: str | None = None


def _is_usage(event: bytes) -> bool:
    return b'"usage":{' in event or b'"usage": {' in event


async def _one_stream(endpoint: Endpoint, request: bytes, gaps: list[float]) -> _Stream:
    """Open, send, and read one stream to [DONE], noting when each token event arrived."""
    seen = _Stream()
    started = perf_counter()
    connection = Connection(endpoint.host, endpoint.port)
    try:
        await connection.send(request)
        head = await connection.read_head()
        if head.status != 200:
            seen.error = f"status {head.status}"
            return seen
        pending, last, done = b"", 0.0, False
        async for now, data in connection.body_pieces(head):
            pending += data
            if b"\n\n" not in pending:
                continue
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event == b"data: [DONE]":
                    done = True
                elif event.startswith(b'data: {"error"'):
                    seen.error = "error event"
                elif event.startswith(b"data:") and not _is_usage(event):
                    if seen.tokens:
                        gaps.append(now - last)
                    else:
                        seen.ttft = now - started
                    seen.tokens += 1
                    last = now
            if done:
                seen.e2e = perf_counter() - started
                break
        if not done and seen.error is None:
            seen.error = "ended without [DONE]"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        seen.error = type(exc).__name__
    finally:
        connection.close()
    return seen


async def streams(endpoint: Endpoint, count: int, tokens: int, timeout: float, watch: Watch) -> StreamsResult:
    """Open `count` streams at once, each for `tokens` tokens, and read them all to their end."""
    request = endpoint.request(tokens, stream=True)
    gaps: list[float] = []

    async def bounded() -> _Stream:
        try:
            return await asyncio.wait_for(_one_stream(endpoint, request, gaps), timeout)
        except TimeoutError:
            return _Stream(error=f"no [DONE] within {timeout:g} s")

    load = _Load(watch)
    load.start()
    seen = await asyncio.gather(*(bounded() for _ in range(count)))
    _, usage, client_share = await load.stop()
    errors: dict[str, int] = {}
    for one in seen:
        if one.error is None and one.tokens != tokens:
            one.error = f"{one.tokens} of {tokens} tokens"
        if one.error is not None:
            errors[one.error] = errors.get(one.error, 0) + 1
    ttfts = [s.ttft for s in seen if s.ttft is not None]
    e2es = [s.e2e for s in seen if s.e2e is not None]
    events = sum(s.tokens for s in seen)
    return StreamsResult(
        count=count, completed=sum(1 for s in seen if s.error is None), errors=errors,
        ttft_p50=stats.percentile(ttfts, 50), ttft_p99=stats.percentile(ttfts, 99),
        gap_p10=stats.percentile(gaps, 10), gap_p50=stats.percentile(gaps, 50),
        gap_p90=stats.percentile(gaps, 90), gap_p99=stats.percentile(gaps, 99),
        burst_share=stats.share_below(gaps, BURST_GAP),
        e2e_p50=stats.percentile(e2es, 50), e2e_p99=stats.percentile(e2es, 99), token_events=events,
        rss_before=usage.rss_before, rss_peak=usage.rss_peak,
        cpu_us_per_event=usage.cpu_seconds / events * 1e6 if events else math.nan, client_cpu_share=client_share,
        open_together=len(e2es) == count and len(ttfts) == count and max(ttfts) < min(e2es),
        gap_histogram=stats.histogram(gaps, GAP_BIN, GAP_BINS))


# --------------------------------------------------------------------------- cancellation

CANCEL_CASES = ("blocking", "stream_before_first_token", "stream_after_first_token")


async def _upstream_stats(upstream: Connection, request: bytes) -> dict[str, float]:
    _, body = await upstream.roundtrip(request)
    return json.loads(body)


async def cancel_trial(endpoint: Endpoint, upstream_host: str, upstream_port: int, case: str,
                       timeout: float = 5.0) -> float | None:
    """Seconds from the client leaving to the simulator seeing its upstream connection close.

    The request goes through `endpoint` to a simulator whose first token comes late (so
    that a request can be left before it); None when the upstream never saw the close
    within `timeout`.
    """
    upstream = Connection(upstream_host, upstream_port)
    stats_request = build_request("GET", upstream_host, upstream_port, "/sim/stats")
    before = await _upstream_stats(upstream, stats_request)
    client = Connection(endpoint.host, endpoint.port)
    try:
        await client.send(endpoint.request(2000, stream=case != "blocking"))
        deadline = time.monotonic() + timeout
        # The request must have reached the upstream before the client leaves.
        while (await _upstream_stats(upstream, stats_request))["requests_total"] <= before["requests_total"]:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.002)
        if case == "stream_after_first_token":
            head = await client.read_head()
            received = b""
            async for _, data in client.body_pieces(head):
                received += data
                if b"data:" in received:
                    break
        else:
            await asyncio.sleep(0.05)
        left = time.time()
        client.close()
        while time.monotonic() < deadline:
            now = await _upstream_stats(upstream, stats_request)
            if now["cancelled"] > before["cancelled"]:
                return max(0.0, now["last_cancel_at"] - left)
            await asyncio.sleep(0.002)
        return None
    finally:
        client.close()
        upstream.close()


# --------------------------------------------------------------------------- command line


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed."""
    return uvloop.run(main) if uvloop is not None else asyncio.run(main)


def _endpoint(url: str, api: str, key: str | None) -> Endpoint:
    parts = urlsplit(url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Endpoint(parts.hostname or "127.0.0.1", parts.port or 80, APIS[api], headers)


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    endpoint = _endpoint(args.url, args.api, args.key)
    watch = Watch(args.pid or [], [os.getpid()])
    if args.mode == "blocking":
        return [asdict(await blocking(endpoint, c, args.tokens, args.warmup, args.duration, watch))
                for c in args.concurrency]
    result = asdict(await streams(endpoint, args.count, args.tokens, args.timeout, watch))
    result.pop("gap_histogram")
    return [result]


def main(argv: list[str] | None = None) -> int:
    """Run one measurement against a URL and print its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("mode", choices=("blocking", "streams"))
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--api", choices=sorted(APIS), default="native")
    parser.add_argument("--key", help="API key sent as a bearer token")
    parser.add_argument("--pid", type=int, action="append", help="process (tree) to sample; repeatable")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per request (16 blocking, 64 streams)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--count", type=int, default=500, help="concurrent streams")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a stream may take")
    args = parser.parse_args(argv)
    args.tokens = args.tokens or (16 if args.mode == "blocking" else 64)
    raise_fd_limit()
    print(json.dumps(run(_main(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
