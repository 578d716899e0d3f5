"""Soak test: tens of thousands of mixed requests through one gunicorn worker, watching its memory
and open file descriptors (`make soak`, or `python -m bench.soak --help`).

The gateway runs as deployed with keys: API keys, request, token and concurrency limits, all
in Redis. The mix: blocking generations, streams, streams the client abandons after the first
event (cancelled), requests the gateway rejects (422, 415), requests without a valid key (401,
refused before their body is read) and requests over a key's limits (429: a key with 1 token a
window, and one with 1 request a minute, which passes once a minute). The simulator is the
upstream. It passes when every request got its expected answer, resident memory grew less
than 5 % over the second half, and the worker's file descriptors are back to their starting
count (kept-alive upstream and Redis connections, an fd each by design, are counted apart).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from app.access.keys import KeyRing, RedisKeyStore
from bench.processes import Gateway, Redis, Simulator
from bench.worker_probe import open_fds, rss_bytes, worker_pid

# One cycle of 24 requests: 8 blocking, 8 streams, 2 abandoned streams, 2 rejected, 1 without a
# valid key, 3 over a key's limits.
CYCLE = (["blocking"] * 8 + ["stream"] * 8 + ["cancelled"] * 2 + ["invalid", "wrong_type", "unauthorized"]
         + ["over_tokens"] * 2 + ["over_requests"])
MAX_RSS_GROWTH = 0.05


@dataclass
class Keys:
    """The soak's API keys: one for the traffic (limits on, never reached), two to cross the 429s."""

    traffic: str
    one_token: str  # every generation is refused: it would use more than the window's 1 token
    one_request: str  # one request a minute passes, the others are refused

    @classmethod
    def create(cls, ring: KeyRing, concurrency: int) -> Keys:
        traffic, _ = ring.create("soak-traffic", rpm=10**7, tpm=10**9, max_concurrent=2 * concurrency)
        one_token, _ = ring.create("soak-one-token", tpm=1)
        one_request, _ = ring.create("soak-one-request", rpm=1)
        return cls(traffic, one_token, one_request)


@dataclass
class Sample:
    """The worker at one moment of the run."""

    seconds: float
    requests_done: int
    rss_bytes: int
    fds: int
    upstream_connections: int
    redis_connections: int


class Soak:
    """Drives the mix from `concurrency` client threads, each with its own kept-alive session."""

    def __init__(self, gateway: Gateway, upstream_port: int, redis_port: int, keys: Keys, total: int,
                 concurrency: int, deadline: float) -> None:
        self.gateway, self.upstream_port, self.redis_port, self.keys = gateway, upstream_port, redis_port, keys
        self.total, self.concurrency, self.deadline = total, concurrency, deadline
        self.worker = worker_pid(gateway.proc.pid)
        self.next_index = 0
        self.done = 0
        self.unexpected: list[str] = []
        self.one_request_passed = 0  # the one-a-minute key's requests that passed (once a window)
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> int | None:
        """The index of the next request to send, or None when the run is over."""
        with self.lock:
            if self.next_index >= self.total or time.monotonic() > self.deadline:
                return None
            self.next_index += 1
            return self.next_index - 1

    def client(self) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {self.keys.traffic}"
            while (index := self.take()) is not None:
                kind = CYCLE[index % len(CYCLE)]
                try:
                    problem = self.send(session, kind, index)
                except requests.RequestException as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.done += 1
                    if problem:
                        self.unexpected.append(f"{kind} #{index}: {problem}")

    def send(self, session: requests.Session, kind: str, index: int) -> str | None:
        """One request of `kind`; a description of what was wrong, or None."""
        url = self.gateway.url + ("/v1/generate/stream" if kind in ("stream", "cancelled") else "/v1/generate")
        body = {"prompt": f"soak {index}", "max_tokens": 8}
        if kind == "invalid":
            reply = session.post(url, json={"prompt": "", "max_tokens": 0}, timeout=30)
            return None if reply.status_code == 422 else f"status {reply.status_code}"
        if kind == "wrong_type":
            reply = session.post(url, data="prompt=hi", headers={"Content-Type": "text/plain"}, timeout=30)
            return None if reply.status_code == 415 else f"status {reply.status_code}"
        if kind == "unauthorized":
            reply = session.post(url, json=body, headers={"Authorization": "Bearer sluice-not-a-key"}, timeout=30)
            return None if reply.status_code == 401 else f"status {reply.status_code}"
        if kind == "over_tokens":
            reply = session.post(url, json=body, headers={"Authorization": f"Bearer {self.keys.one_token}"},
                                 timeout=30)
            code = reply.json().get("error", {}).get("code") if reply.status_code == 429 else None
            return None if code == "token_limit_exceeded" else f"status {reply.status_code}"
        if kind == "over_requests":
            reply = session.post(url, json=body, headers={"Authorization": f"Bearer {self.keys.one_request}"},
                                 timeout=30)
            if reply.status_code == 200:
                with self.lock:
                    self.one_request_passed += 1
                    minutes = int((time.monotonic() - self.started) // 60) + 2  # windows this run can touch
                    return None if self.one_request_passed <= minutes else "the one-a-minute key passed again"
            return None if reply.status_code == 429 else f"status {reply.status_code}"
        if kind == "blocking":
            reply = session.post(url, json=body, timeout=30)
            return None if reply.status_code == 200 and reply.json()["text"] else f"status {reply.status_code}"
        with session.post(url, json=body, timeout=30, stream=True) as reply:
            if reply.status_code != 200:
                return f"status {reply.status_code}"
            if kind == "cancelled":
                next(reply.iter_content(chunk_size=None))
                return None  # leaving the `with` closes the connection mid-stream: a disconnect
            content = reply.content
        return None if content.endswith(b"data: [DONE]\n\n") and b'"error"' not in content else "stream cut"

    def sample(self, started: float) -> Sample:
        targets = open_fds(self.worker)
        return Sample(seconds=round(time.monotonic() - started, 1), requests_done=self.done,
                      rss_bytes=rss_bytes(self.worker), fds=len(targets),
                      upstream_connections=connections_to(self.worker, targets, self.upstream_port),
                      redis_connections=connections_to(self.worker, targets, self.redis_port))

    def run(self, sample_every: float) -> list[Sample]:
        """Send every request; sample the worker while they run and once more after they end."""
        started = time.monotonic()
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(self.concurrency)]
        for thread in threads:
            thread.start()
        samples = [self.sample(started)]
        while any(thread.is_alive() for thread in threads):
            time.sleep(sample_every)
            samples.append(self.sample(started))
        time.sleep(2)  # the clients' sessions are closed: let the worker unwind those connections
        samples.append(self.sample(started))
        return samples


def connections_to(pid: int, fd_targets: list[str], port: int) -> int:
    """How many of the worker's sockets are connections to the upstream (its kept-alive pool)."""
    inodes = {target[len("socket:["):-1] for target in fd_targets if target.startswith("socket:[")}
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
            count += 1
    return count


def verdict(samples: list[Sample], start: Sample, soak: Soak) -> dict:
    """The figures and whether they pass."""
    half = min(samples, key=lambda s: abs(s.requests_done - soak.done / 2))
    end = samples[-1]
    growth = (end.rss_bytes - half.rss_bytes) / half.rss_bytes
    own_fds_start = start.fds - start.upstream_connections - start.redis_connections
    own_fds_end = end.fds - end.upstream_connections - end.redis_connections
    checks = {
        "all requests sent": soak.done >= soak.total,
        "every answer as expected": not soak.unexpected,
        "RSS growth in the second half < 5%": growth < MAX_RSS_GROWTH,
        "fds back to the starting count": own_fds_end <= own_fds_start,
        "upstream pool within the concurrency": end.upstream_connections <= soak.concurrency,
        # Requests make their Redis calls one at a time, beside the fair queue's own: a leak would
        # grow with the requests, far past this.
        "Redis pool within twice the concurrency": end.redis_connections <= 2 * soak.concurrency,
    }
    return {
        "requests": soak.done, "unexpected": len(soak.unexpected), "examples": soak.unexpected[:5],
        "seconds": end.seconds, "requests_per_second": round(soak.done / max(end.seconds, 0.1)),
        "rss_mb": {"start": mb(start.rss_bytes), "half": mb(half.rss_bytes), "end": mb(end.rss_bytes),
                   "peak": mb(max(s.rss_bytes for s in samples))},
        "rss_growth_second_half_percent": round(100 * growth, 2),
        "fds": {"start": start.fds, "end": end.fds, "peak": max(s.fds for s in samples),
                "upstream_connections_start": start.upstream_connections,
                "upstream_connections_end": end.upstream_connections,
                "redis_connections_start": start.redis_connections, "redis_connections_end": end.redis_connections},
        "checks": checks, "passed": all(checks.values()),
    }


def mb(value: int) -> float:
    return round(value / 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests in the measured run")
    parser.add_argument("--warmup", type=int, default=2_000, help="requests before the starting sample")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop sending after this long")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--samples", type=Path, help="write every sample here as JSON lines")
    args = parser.parse_args(argv)

    logs = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    redis = Redis(log=logs / "redis.log")
    sim = Simulator(log=logs / "simulator.log")
    gateway = Gateway({"SLUICE_UPSTREAM_URL": sim.url, "SLUICE_MODEL": "sim-model", "SLUICE_LOG_LEVEL": "warning",
                       "SLUICE_REDIS_URL": redis.url}, log=logs / "gateway.log")
    try:
        keys = Keys.create(KeyRing(None, RedisKeyStore(redis.client)), args.concurrency)
        deadline = time.monotonic() + args.max_seconds
        # The warm-up fills the upstream pool and the worker's caches; then the measured run.
        start = Soak(gateway, sim.port, redis.port, keys, args.warmup, args.concurrency,
                     deadline).run(args.sample_every)[-1]
        soak = Soak(gateway, sim.port, redis.port, keys, args.requests, args.concurrency, deadline)
        samples = soak.run(args.sample_every)
        report = verdict(samples, start, soak)
    finally:
        gateway.stop()
        sim.stop()
        redis.stop()
    if args.samples:
        args.samples.write_text("".join(json.dumps(asdict(s)) + "\n" for s in samples))
    print(json.dumps(report, indent=2))
    print(f"logs: {logs}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
