"""The table of every setting, grouped by what it governs (rendered in docs/configuration.md).

Standard library only (see app/config/__init__.py).
"""
from __future__ import annotations

from .setting import Setting

MiB = 1024 * 1024

SETTINGS: tuple[Setting, ...] = (
    # --- serving (read by gunicorn.conf.py as well as by the app) ---
    Setting("BIND", str, "127.0.0.1:8080", "Address gunicorn listens on (host:port, comma-separated for several)."),
    Setting("WORKERS", int, 2, "Gunicorn gevent worker processes; one per core is a good start.", minimum=1),
    Setting("WORKER_CONNECTIONS", int, 1000,
            "Concurrent connections per worker; also the size of each worker's upstream connection pool.",
            minimum=1),
    Setting("KEEPALIVE", int, 75,
            "Seconds an idle client connection stays open; longer than nginx's upstream keepalive_timeout (60 s).",
            minimum=0),
    Setting("GRACEFUL_TIMEOUT", int, 300,
            "Seconds a worker has, on reload or stop, to finish the generations in flight.", minimum=1),
    Setting("LOG_LEVEL", str, "info", "Log level of the gateway and gunicorn.",
            choices=("debug", "info", "warning", "error", "critical")),
    # --- behind a reverse proxy (nginx/, docs/deployment.md) ---
    Setting("TRUSTED_PROXIES", int, 0,
            "Proxies in front of the gateway that append to X-Forwarded-For (nginx alone: 1). The client's "
            "address, scheme and host are taken from their X-Forwarded-* headers; 0 trusts none.",
            minimum=0, maximum=10),
    # --- upstream ---
    Setting("UPSTREAM_URL", str, "",
            "Base URL of the upstream model server (vLLM unless UPSTREAM_KIND says otherwise), e.g. "
            "http://127.0.0.1:8000; several replicas separated by commas. "
            "Empty: `sluice serve` starts the embedded engine and sets it."),
    Setting("UPSTREAM_CONNECT_TIMEOUT", float, 3.0, "Seconds to open a connection to the upstream.", minimum=0.001),
    Setting("UPSTREAM_READ_TIMEOUT", float, 120.0,
            "Seconds the upstream may stay silent (before the response, or between two chunks) before a 504.",
            minimum=0.001),
    Setting("UPSTREAM_HEALTH_TIMEOUT", float, 2.0,
            "Seconds a health check (background or /readyz) waits for a replica.",
            minimum=0.001),
    Setting("UPSTREAM_API_KEY", str, "", "Bearer token sent to the upstream, if it requires one."),
    Setting("UPSTREAM_SCHEDULING_POLICY", str, "fcfs", "vLLM's --scheduling-policy on the UPSTREAM_URL replicas; "
            "priority: each key's class is sent as vLLM's priority field.", choices=("fcfs", "priority")),
    Setting("MODEL", str, "",
            "Model (the upstream's name for it) used when a request names none. Empty: the upstream's first "
            "served model."),
    # --- several replicas: routing, health, failover (docs/scaling.md) ---
    Setting("UPSTREAMS_FILE", str, "",
            "JSON file listing the replicas (url, kind, weight, models); instead of UPSTREAM_URL."),
    Setting("ROUTING_STRATEGY", str, "load_aware",
            "How a replica is chosen among those serving the model.",
            choices=("load_aware", "least_outstanding", "round_robin", "prefix_affinity")),
    Setting("HEALTH_INTERVAL", float, 1.0,
            "Seconds between a worker's checks of each replica's /health (and scrapes of vLLM's /metrics).",
            minimum=0.05),
    Setting("EJECT_AFTER_FAILURES", int, 3,
            "Consecutive failed requests after which a replica is taken out of rotation.", minimum=1),
    Setting("EJECT_COOLDOWN", float, 10.0,
            "Seconds an ejected replica stays out before a passing health check lets it return.", minimum=0),
    Setting("RECOVERY_SECONDS", float, 30.0,
            "Seconds a returning replica takes to ramp from a tenth of its weight to all of it.", minimum=0),
    Setting("FAILOVER_TRIES", int, 3,
            "Replicas a request may try, the first included, while no byte has reached the client.", minimum=1),
    Setting("FAILOVER_BUDGET", float, 10.0,
            "Seconds after a request's first try during which another replica may still be tried.", minimum=0),
    Setting("AFFINITY_PREFIX_CHARS", int, 256,
            "prefix_affinity: characters of the prompt (or chat messages) that pick the replica.", minimum=1),
    Setting("AFFINITY_LOAD_FACTOR", float, 1.5,
            "prefix_affinity: a replica keeps its prefixes until its load exceeds this many times the "
            "average; then they spill to the next replica.", minimum=1.0),
    # --- request limits ---
    Setting("MAX_BODY_BYTES", int, 1 * MiB, "Largest request body accepted; larger gets 413.", minimum=1),
    Setting("MAX_PROMPT_CHARS", int, 32_000, "Longest prompt accepted, in characters; longer gets 422.", minimum=1),
    Setting("MAX_TOKENS_LIMIT", int, 4096, "Largest max_tokens a request may ask for; larger gets 422.", minimum=1),
    Setting("MAX_N", int, 8, "Largest n and best_of; 422 above. Tokens are reserved per completion.", minimum=1),
    Setting("MAX_UPSTREAM_BODY_BYTES", int, 32 * MiB, "Largest blocking upstream answer; 502 above.", minimum=1),
    Setting("MAX_SSE_EVENT_BYTES", int, 32 * MiB, "Largest upstream stream event or Ollama line; an error event above.",
            minimum=1),
    # --- compatible API, WebSocket, model names and upstream kinds ---
    Setting("UPSTREAM_KIND", str, "vllm",
            "What the upstream is: vllm; ollama (its native /api/generate and /api/chat, translated); or "
            "openai (any other OpenAI-compatible server, ready when /v1/models answers).",
            choices=("vllm", "ollama", "openai")),
    Setting("MODEL_MAP", str, "",
            "Model names clients use, mapped to the upstream's served names: comma-separated client=upstream "
            "pairs, e.g. gpt-4o-mini=smollm2,fast=smollm2. When set, only these names are accepted (others "
            "get 404) and /v1/models lists them; empty: names pass through and /v1/models lists the upstream's."),
    Setting("UNKNOWN_FIELDS", str, "pass",
            "Request fields of the OpenAI-compatible routes that Sluice does not know (vLLM's own, e.g. "
            "structured_outputs, chat_template_kwargs): pass (forwarded upstream unchanged; known fields are "
            "still checked) or reject (422 naming them). The native API always rejects them.",
            choices=("pass", "reject")),
    Setting("WS_PING_INTERVAL", float, 25.0,
            "Seconds between pings on /v1/generate/ws, which keep idle connections open through proxies; a "
            "client that has not answered the previous ping is disconnected. 0 turns pings off.", minimum=0),
    Setting("WS_MAX_QUEUED_MESSAGES", int, 16, "Messages a WebSocket may queue; a 1008 close above.", minimum=1),
    # --- observability (metrics, logs) ---
    Setting("METRICS_TOKEN", str, "", "Bearer token for /metrics and /readyz's details. Empty: loopback clients only."),
    Setting("METRICS_DIR", str, "",
            "Folder where gunicorn workers keep their metrics (prometheus-client multiprocess mode); emptied "
            "at start. Empty: a new folder in the system temp folder, removed at exit."),
    # --- client connections ---
    Setting("CLIENT_BODY_TIMEOUT", float, 30.0,
            "Seconds a client has to send its whole request body; slower gets 408 and the connection is "
            "closed, so a client trickling bytes cannot hold a connection slot forever.", minimum=0.001),
    # --- the embedded engine (`sluice serve` without SLUICE_UPSTREAM_URL) ---
    Setting("ENGINE_HOME", str, "",
            "Folder for the engine's virtual environment and converted model. Empty: ~/.cache/sluice."),
    Setting("ENGINE_MODEL_DIR", str, "",
            "Hugging Face model folder the engine serves. Empty: SmolLM2-135M-Instruct, fetched and "
            "converted once into ENGINE_HOME."),
    Setting("ENGINE_SERVED_MODEL_NAME", str, "smollm2", "Model name the engine serves under."),
    Setting("ENGINE_DTYPE", str, "float32",
            "Weights' dtype. float32 because bfloat16 gives garbage on CPUs without AVX-512 BF16.",
            choices=("float32", "bfloat16", "float16", "auto")),
    Setting("ENGINE_MAX_MODEL_LEN", int, 2048, "Context length (prompt plus completion) in tokens.", minimum=16),
    Setting("ENGINE_KVCACHE_GIB", int, 2, "GiB of memory for the engine's KV cache (VLLM_CPU_KVCACHE_SPACE).",
            minimum=1),
    Setting("ENGINE_PORT", int, 8100, "Loopback port of the embedded engine.", minimum=1, maximum=65535),
    Setting("ENGINE_EMBEDDINGS", bool, True, "Also run an embedding engine (all-MiniLM-L6-v2, model `minilm`, "
            "fetched once) for /v1/embeddings, /score and /rerank. 0: the chat model only.", minimum=None),
    Setting("ENGINE_EMBEDDINGS_PORT", int, 8101, "Loopback port of the embedding engine.", minimum=1, maximum=65535),
    Setting("ENGINE_START_TIMEOUT", float, 900.0, "Seconds to wait for the engine's /health after a start.",
            minimum=1),
    Setting("ENGINE_MAX_RESTARTS", int, 5, "Restarts of a dead engine before `sluice serve` gives up.", minimum=0),
    Setting("ENGINE_STATE_FILE", str, "",
            "JSON file(s), comma-separated, where the engine supervisors record their engines' states; /readyz "
            "reports them. Set by `sluice serve`."),
    # --- access control and fairness (docs/security.md) ---
    Setting("KEYS_FILE", str, "",
            "JSON file of API keys (stored as SHA-256 hashes), written by `sluice keys`. Setting it, or "
            "REDIS_URL, makes every API request need a key."),
    Setting("REDIS_URL", str, "",
            "Redis for request and token limits, budgets' counts and in-flight counts shared by every worker and "
            "host, and key revocations announced at once, e.g. redis://127.0.0.1:6379/0. It holds only what may "
            "be lost (keys live in the database). Empty: limits are counted per worker process."),
    Setting("REDIS_TIMEOUT", float, 1.0, "Seconds to connect to Redis, or to wait for its answer, before it "
            "counts as down.", minimum=0.001),
    Setting("REDIS_MAX_CONNECTIONS", int, 64,
            "Connections to Redis a worker opens at most; a request waits (at most REDIS_TIMEOUT) for one "
            "that is free. Bounds what a burst of requests costs Redis and the worker.", minimum=1),
    Setting("REDIS_FAILURE_MODE", str, "open",
            "When Redis is down: `open` keeps serving with per-process limits (a warning is logged), "
            "`closed` refuses with 503. Unknown keys are never let in either way.", choices=("open", "closed")),
    # --- the system of record: keys, budgets, usage (docs/usage.md) ---
    Setting("DATABASE_URL", str, "",
            "Database holding API keys, budgets and the usage ledger: postgresql://USER:PASSWORD@HOST/NAME when "
            "several hosts share them, or sqlite:///PATH. Empty: sluice.db (SQLite, WAL) in the instance folder."),
    Setting("LEDGER", bool, True, "Record one usage row per generation that reached admission (docs/usage.md)."),
    Setting("LEDGER_BUFFER", int, 100_000,
            "Usage rows a worker keeps while the database is down or slow; past it rows are dropped and counted "
            "(sluice_ledger_rows_total{result=\"dropped\"}).", minimum=1),
    Setting("USAGE_RETENTION_DAYS", int, 400,
            "Days of usage rows kept; older rows are deleted in small batches. 0: keep everything. Keep more "
            "than 31 with monthly budgets (a Redis restarted empty re-reads the month from the ledger).",
            minimum=0),
    Setting("ALLOW_UNAUTHENTICATED", bool, False,
            "Allow serving without API keys on an address other than loopback. Without it, a gateway "
            "with no keys configured refuses to start there."),
    Setting("DEFAULT_RPM", int, 0, "Requests per minute for a key (or, without keys, a client address) whose "
            "record sets none. 0: no limit.", minimum=0),
    Setting("DEFAULT_TPM", int, 0, "Tokens (prompt plus completion) per TOKEN_WINDOW seconds for a key whose "
            "record sets none. 0: no limit.", minimum=0),
    Setting("DEFAULT_MAX_CONCURRENT", int, 0, "Generations in flight at once for a key whose record sets none. "
            "0: no limit.", minimum=0),
    Setting("TOKEN_WINDOW", float, 60.0, "Seconds of the token-limit window (tpm counts tokens per window).",
            minimum=1),
    Setting("KEY_SLOT_TTL", float, 900.0,
            "Seconds after which a key's in-flight slot frees itself if its worker died without releasing it; "
            "longer than the longest generation.", minimum=1),
    Setting("MAX_IN_FLIGHT", int, 256, "Generations a worker runs at once; more wait in its admission queue.",
            minimum=1),
    Setting("ADMISSION_QUEUE", int, 256,
            "Requests a worker lets wait for a free generation slot; beyond that, 503 at once.", minimum=0),
    Setting("ADMISSION_TIMEOUT", float, 10.0, "Seconds a request waits for a free generation slot before 503.",
            minimum=0.001),
    Setting("REPLICA_CAPACITY", int, 0, "Generations a replica runs at once through the gateway (upstreams file: "
            "per replica); more wait in the fair queue. 0: no bound (docs/scaling.md).", minimum=0),
    Setting("QUEUE_TIMEOUT", float, 30.0, "Seconds a request waits for replica capacity before 503.", minimum=0.001),
    Setting("QUEUE_MAX", int, 1000, "Requests that may wait for replica capacity (all workers and hosts, with "
            "Redis; else per worker); beyond that, 503 at once.", minimum=0),
    Setting("QUEUE_POLICY", str, "fair", "Order in which waiting requests get replica capacity: fair (priority "
            "classes, then keys by weight) or fifo.", choices=("fair", "fifo")),
)
