"""One pydantic-settings ``Settings`` for workers, producers and the CLI.

Every field is read from an ``LVM_<FIELD>`` environment variable (or a ``.env`` file in the
working directory). Nested values use ``__``: ``LVM_MODELS__LSTM=artifacts/lstm.pt``.
A bad value stops start-up with a message naming the variable, never a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.connections import SCHEMES, parse_sentinel
from config.urls import safe_url

ENV_PREFIX = "LVM_"


def comma_list(value: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated setting (LVM_GATEWAY_*)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_cpus(spec: str) -> set[int]:
    """``"1"``, ``"0,2-3"`` -> {1}, {0, 2, 3}; ``""`` -> set() (no pinning). ValueError when malformed."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or (last and int(last) < int(first)):
            raise ValueError(f"{part!r} is not a CPU number or range (e.g. 1, 0,2-3)")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
    )

    # --- Redis and queues -------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL: redis://:password@host:port/db, rediss:// for TLS, unix:///path, or through "
        "Sentinel: redis+sentinel://:password@h1:26379,h2:26379/<master name>/db (rediss+sentinel:// for TLS).",
    )
    queue_prefix: str = Field("lvm-", description="Queue name = prefix + model name, e.g. lvm-lstm.")

    # --- What a worker serves -----------------------------------------------------------
    artifacts_dir: Path = Field(Path("artifacts"), description="Where `make model` writes its files.")
    models: dict[str, Path] = Field(
        default_factory=lambda: {
            "lstm": Path("artifacts/lstm.pt"),
            "gru": Path("artifacts/gru.pt"),
        },
        description="Model name -> checkpoint path. A worker on queue lvm-<name> serves models[name].",
    )
    model: str | None = Field(None, description="Model this worker serves; default: taken from its single queue name.")
    device: str = Field("cpu", description="cpu, cuda, cuda:N, mps or auto.")
    pipeline: Literal["model", "null"] = Field(
        "model",
        description="model: encoder, LVM and decoder. null: benchmarks only (lvmq bench overhead): every request "
        "gets a fixed answer with no encoder or model, so what is measured is the queue layer alone.",
    )
    torch_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch intra-op threads per worker. 1 keeps latency stable on shared 2-core hosts.",
    )
    search_threads: int = Field(
        2, ge=1, le=256, description="torch threads for the sentence-bank search only (one large matrix product)."
    )
    encoder_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Encoder precision. auto: float16 on CUDA; bfloat16 autocast on a CPU with native bfloat16 "
        "(AMX / AVX512-BF16), float32 on other CPUs and MPS. A model stored in float16 is upcast on CPU; float16 "
        "on CPU is refused (10x slower there).",
    )
    encoder_quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: dynamic int8 linear layers on CPU (opt-in). 2x faster at batch 32, but vectors only "
        "cos 0.95-0.98 to float32 (lvmq bench encoder); not the default for that reason.",
    )
    forward: float | None = Field(
        None,
        ge=0.0,
        le=0.5,
        description="Default step away from the last sentence (a request's `forward` overrides it): answers "
        "are decoded from unit(pred - forward * last). Unset: the value the checkpoint recorded from its val "
        "forward curve (lvmq inspect shows it), else 0.",
    )
    encoder: str = Field(
        "minilm",
        description="Sentence encoder: 'minilm' (packaged all-MiniLM-L6-v2), a local sentence-transformers "
        "directory, or 'gtr' / 'gtr:/path' (GTR-T5-base from the local Hugging Face cache or a directory: the "
        "vectors vec2text and the prior system's checkpoints use).",
    )
    bank_path: Path = Field(Path("artifacts/bank.npz"), description="Sentence bank for the decoder.")
    max_decode_steps: int = Field(20, ge=0, le=200, description="Upper bound on a request's decode_steps.")
    decoder: Literal["bank", "vec2text", "auto"] = Field(
        "bank",
        description="bank (exact, fast); vec2text (needs the extra and GTR vectors); auto: bank when "
        "decode_steps=0, vec2text otherwise.",
    )
    vec2text_inversion_path: Path | None = Field(None, description="Local copy of jxm/gtr__nq__32 (else HF cache).")
    vec2text_corrector_path: Path | None = Field(None, description="Local copy of jxm/gtr__nq__32__correct.")
    vec2text_beam_width: int = Field(0, ge=0, le=16, description="vec2text sequence beam width (0 = greedy).")

    # --- Throughput ------------------------------------------------------------------------
    max_batch: int = Field(
        32, ge=1, le=512, description="Jobs a worker takes from its queue at once and runs through one forward."
    )
    max_batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="How long to wait for more jobs to fill a batch; 0 = never wait."
    )
    prefetch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Claim the next batch while this one computes (one I/O thread). auto: on for CUDA and MPS, "
        "where the device would otherwise idle while Redis answers; off on CPU, where the claim competes with "
        "the computation for the same cores (measured: no gain on 2 cores). Off also when several workers "
        "share a queue at low load: a claimed-ahead request waits for the batch in progress.",
    )
    conversation_cache: bool = Field(True, description="Remember each conversation's sentence vectors in Redis.")
    conversation_ttl: int = Field(3600, ge=1, description="Seconds a conversation's vectors are kept after a turn.")

    # --- Timing and retention ------------------------------------------------------------
    heartbeat_seconds: float = Field(5.0, gt=0, le=300, description="Heartbeat period; key TTL is 3x.")
    lease_seconds: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="A claimed job's lease, renewed every heartbeat while its batch runs. A job whose lease "
        "ran out and whose worker stopped renewing is recovered within about lease + one heartbeat. Must be "
        "more than 2 x LVM_HEARTBEAT_SECONDS, so one late beat cannot lose a running batch. "
        "Default: 3 x LVM_HEARTBEAT_SECONDS (15 s).",
    )
    watchdog_grace_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A batch still computing this long past its deadline (its main thread stuck in a C call, "
        "where the deadline cannot interrupt it) stops being renewed, and the worker exits with code 3 so that "
        "compose or Kubernetes restart it; other workers recover its jobs.",
    )
    redis_socket_timeout: float = Field(
        5.0,
        ge=2,
        le=600,
        description="Longest a worker waits for one Redis reply before it drops the connection and retries "
        "on a new one (a half-open connection after a partition). The heartbeat's own connection waits at "
        "most min(this, LVM_HEARTBEAT_SECONDS).",
    )
    max_reruns: int = Field(
        1, ge=0, le=10, description="Times a job whose worker died mid-batch is re-queued before it fails 'abandoned'."
    )
    max_job_bytes: int = Field(
        1_048_576,
        ge=4096,
        le=64 * 1_048_576,
        description="Cap on any field of a job hash, and on its data after decompression (a zlib bomb stops here).",
    )
    result_ttl: int = Field(
        3600,
        ge=1,
        description="Seconds a successful result is kept: the producer's default for new jobs, and "
        "the worker's for jobs that name none.",
    )
    failure_ttl: int = Field(
        86400, ge=1, description="Seconds a failed job is kept (producer default; worker default, rejected jobs)."
    )
    queue_ttl: int = Field(
        300, ge=1, description="Seconds a request may wait in the queue before it expires (set by the producer)."
    )
    job_timeout: int = Field(
        60,
        ge=1,
        description="Producers: the timeout put on new jobs. Workers: the most any job may ask for; a batch "
        "runs under the longest timeout among its jobs and stops computing when it passes (jobs end 'timeout').",
    )
    max_queued: int = Field(
        -1,
        ge=-1,
        le=10_000_000,
        description="Admission bound per model: submits to a queue already this deep are refused (the gateway: 503 "
        "with Retry-After; ChatClient: Overloaded). -1 (default): derived from what the serving workers measured they "
        "serve (jobs per busy second, summed) times 80% of LVM_JOB_TIMEOUT, the backlog they clear in time; "
        "LVM_ADMISSION_FLOOR while no serving worker has measured one (start-up, a worker outage). 0: no bound.",
    )
    admission_floor: int = Field(
        256,
        ge=1,
        le=10_000_000,
        description="The derived admission bound (LVM_MAX_QUEUED -1) while no serving worker has measured its rate: "
        "at start-up and through a worker outage the queue still stops growing here, instead of taking every "
        "submit (it used to fail open). 256 is 8 batches of 32: what a worker on a 2-core host serves in a few "
        "seconds, so the jobs admitted during an outage are answered soon after a worker returns.",
    )
    fair_batch_every: int = Field(
        10,
        ge=1,
        le=1000,
        description="Fair share's starvation bound for batch jobs: within a tenant's turns a worker takes at most "
        "this many interactive jobs before one of its batch jobs, so batch keeps at least 1/(N+1) of the tenant's "
        "share however much interactive work arrives. Read by workers.",
    )
    batch_yield_jobs: int = Field(
        -1,
        ge=-1,
        le=10_000,
        description="Batch yields at the batch's granularity: while the queue served an interactive job in the last "
        "LVM_BATCH_YIELD_WINDOW_S, a worker's batch takes at most this many batch-class jobs, and none beside an "
        "interactive job (interactive ones as many as LVM_MAX_BATCH allows). A worker computes a batch to its end, "
        "so an interactive job arriving meanwhile waits for all of it: on a 2-core CPU a batch of 32 costs ~160 "
        "ms, one job ~20 ms. The price is "
        "batch throughput while interactive traffic lasts (docs/benchmarks.md, `lvmq bench priority`); a batch "
        "backlog alone still fills whole batches. -1 (default): 8 on CPU (measured there), 0 on CUDA and MPS, where "
        "a whole batch of 32 cost about 3 single requests (18 ms against 5.7 ms on an H200, against 8 on CPU) and the "
        "cap's price against its gain is not measured yet (`make bench-device`). 0: batch jobs fill batches as "
        "interactive ones do. Read by workers.",
    )
    batch_yield_window_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="How long after the last interactive job claimed from a queue its batch work stays in small "
        "batches (LVM_BATCH_YIELD_JOBS). Longer than the gaps between a frontend's chats, so the first chat after "
        "a pause does not find a full batch of batch jobs ahead of it. Read by workers.",
    )
    lane: Literal["all", "light"] = Field(
        "all",
        description="all: the worker serves every tenant by fair share. light: it serves only light tenants' "
        "interactive jobs (at most LVM_LIGHT_MAX_QUEUED of them queued), never a flooding tenant's, so a light "
        "tenant's job does not wait for a flooding tenant's batch; while one is live, 'all' workers leave those "
        "jobs to it. Capacity kept for light tenants is capacity a flooding tenant cannot have: run one beside "
        "the others (docs/gateway.md, light lanes; `lvmq bench fairness --light-lane`). Read by workers.",
    )
    cpus: str = Field(
        "",
        description="CPUs this worker runs on (Linux affinity), e.g. 1 or 0,2-3; empty: wherever the scheduler "
        "puts it. A light lane (LVM_LANE=light) keeps its latency only on a CPU nothing busy shares: give it its "
        "own, and the other workers the rest. Read by workers.",
    )
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="This worker's CPU priority, as Unix nice (0 normal, 19 lowest): every thread runs at it. Beside "
        "a light lane (LVM_LANE=light) at 0, give ordinary workers 10: the lane gets the CPU the moment a light job "
        "arrives, and they use all it leaves (on 2 cores the flooding tenant kept 0.86-0.89 of its rate this way, "
        "0.60-0.79 with the lane pinned to a CPU of its own, LVM_CPUS). Read by workers.",
    )
    light_max_queued: int = Field(
        4,
        ge=0,
        le=10_000,
        description="A light lane (LVM_LANE=light) serves the tenants with at most this many interactive jobs "
        "queued: they keep up. One past it (a burst) is served by fair share as before; 0: the lane serves no one. "
        "The other workers hold what a live lane's last claim said it serves, whatever their own value. Read by "
        "light-lane workers.",
    )
    drain_seconds: float = Field(
        30.0, gt=0, le=3600, description="After SIGTERM, how long a worker may finish its batch before it exits anyway."
    )

    producer_retries: int = Field(
        0, ge=0, le=20, description="Times a producer retries (with backoff) when Redis is unreachable."
    )

    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        min_length=1,
        max_length=200,
        description="The embedding model embed jobs ask for (the gateway's /v1/embeddings model id, ChatClient.embed's "
        "default): a worker answers only if its encoder has this name (all-MiniLM-L6-v2 for LVM_ENCODER=minilm; the "
        "int8 one is all-MiniLM-L6-v2-int8), so vectors of another encoder are never handed out as these.",
    )
    embedding_via: str = Field(
        "lstm",
        min_length=1,
        max_length=64,
        description="The chat model whose queue and workers answer embed jobs (every worker of a deployment loads the "
        "same encoder): lstm, the model `make demo` serves, unless set.",
    )
    producer_tenant: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="The tenant ChatClient's jobs count against for fair share (the gateway uses each API key's "
        "name). Backends sharing one queue through ChatClient get their own share each with their own tenant.",
    )
    producer_priority: Literal["interactive", "batch"] = Field(
        "interactive",
        description="ChatClient's default priority class: batch yields to interactive within its tenant's share.",
    )
    producer_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="After each submit, WAIT until this many replicas hold it (Redis WAIT); 0 = don't. With "
        "Sentinel, a submit a replica confirmed survives the master's loss; one it did not raises NotReplicated "
        "(retry it with the same idempotency key).",
    )
    producer_wait_ms: int = Field(
        500,
        ge=1,
        le=60000,
        description="How long a submit's WAIT may take. With LVM_PRODUCER_WAIT_AOF the default is 1500: on nodes "
        "with appendfsync everysec (the default) a write reaches the disk up to a second later.",
    )
    producer_wait_aof: bool = Field(
        False,
        description="Confirmed means fsynced: each submit's WAIT becomes WAITAOF 1 <LVM_PRODUCER_WAIT_REPLICAS>, so "
        "the job is in the master's append-only file on disk and in that many replicas' (0: the master's alone) "
        "before the submit answers. Needs Redis 7.2+ with appendonly yes: against an older server, or one without "
        "an AOF, ChatClient and the gateway refuse to submit, naming what is missing (never a silent WAIT).",
    )

    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port (off when unset)."
    )

    # --- HTTP gateway (lvmq gateway) ---------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Address `lvmq gateway` listens on.")
    gateway_proxy_headers: bool = Field(
        False,
        description="Trust X-Forwarded-For and X-Forwarded-Proto from LVM_GATEWAY_FORWARDED_ALLOW_IPS (a reverse "
        "proxy in front of the gateway). Off by default: uvicorn's own default trusts them from 127.0.0.1, so a "
        "same-host proxy or tunnel could make any client look local. Off and without API keys, a forwarded request "
        "is refused (403).",
    )
    gateway_forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="With LVM_GATEWAY_PROXY_HEADERS: the proxies' addresses, comma-separated (uvicorn's "
        "forwarded_allow_ips).",
    )
    gateway_port: int = Field(8000, ge=1, le=65535, description="Port `lvmq gateway` listens on.")
    gateway_api_keys: str = Field(
        "",
        description="Comma-separated API keys, each the key itself or sha256:<hex> of it "
        "(`lvmq gateway --hash-key -`); the gateway keeps only hashes. Unset: no keys, and only clients from "
        "LVM_GATEWAY_LOCAL_NETWORKS are served.",
    )
    gateway_admin_keys: str = Field(
        "",
        description="Comma-separated operator keys for the ops page (/ops) and its API, each name=key or "
        "name=sha256:<hex> (`lvmq gateway --hash-key -`); the name is what the audit log records. A set of its own, "
        "apart from the chat keys, and needed even in local-only mode: unset, /ops answers 403 to everyone.",
    )
    gateway_metrics_key: str = Field(
        "",
        description="The bearer key Prometheus scrapes the gateway's /metrics with (the key or sha256:<hex>); admin "
        "keys serve too. Unset: /metrics answers only clients from LVM_GATEWAY_LOCAL_NETWORKS.",
    )
    gateway_local_networks: str = Field(
        "127.0.0.0/8,::1/128",
        description="Comma-separated networks served without an API key when LVM_GATEWAY_API_KEYS is unset.",
    )
    gateway_models: str = Field(
        "",
        description="Comma-separated models the gateway offers (/v1/models says which have a ready worker); "
        "default: every model in LVM_MODELS.",
    )
    gateway_rate_per_s: float = Field(
        50.0,
        gt=0,
        le=100000,
        description="Submits per second each API key may make, sustained. Sized for a frontend key (one key, many "
        "users): 50/s is a few hundred users chatting at once; a single-user key can take less.",
    )
    gateway_burst: int = Field(
        200,
        ge=1,
        le=100000,
        description="Submits a key may make at once (token bucket size): 200 lets a frontend's users arrive together "
        "(`lvmq bench crowd`: 64 concurrent users behind one key all answered).",
    )
    gateway_max_body_bytes: int = Field(
        1_048_576, ge=1024, le=64 * 1_048_576, description="Largest request body accepted (413 above)."
    )
    gateway_cors_origins: str = Field(
        "", description="Comma-separated origins allowed to call the API from a browser (CORS); none by default."
    )
    gateway_max_wait_s: float = Field(60.0, gt=0, le=600, description="Upper bound on GET ?wait=N.")
    gateway_keepalive_s: float = Field(
        15.0,
        gt=0,
        le=60,
        description="How often a streamed completion that is still waiting for its job sends an SSE comment line "
        "(`: keep-alive`, which SSE parsers skip): proxies cut streams idle for 30-100 s.",
    )
    gateway_secret: str = Field(
        "",
        description="Required with API keys: the server secret the gateway keys each API key's owner id with "
        "(HMAC-SHA256), so the ids stored on jobs (lvm_owner) cannot be brute-forced by a Redis reader. "
        "Comma-separated to rotate: the first signs, the others still read the jobs they signed. Generate one: "
        "python -c 'import secrets; print(secrets.token_hex(32))'.",
    )
    gateway_keys_file: Path | None = Field(
        None,
        description="A JSON file of named API keys with their own limits, as hashes (`lvmq keys add NAME` writes it; "
        "docs/gateway.md has the format). Re-read when it changes, so `lvmq keys revoke` needs no restart. Keys in "
        "LVM_GATEWAY_API_KEYS keep the default limits (the LVM_GATEWAY_* settings).",
    )
    gateway_redis_connections: int = Field(
        256,
        ge=4,
        le=10_000,
        description="Redis connections one gateway process may hold. Past it a request waits for one (up to 5 s) "
        "instead of failing: redis-py's default pool refused past 100 and a crowd of concurrent chats got 503.",
    )
    gateway_read_rate_per_s: float = Field(
        100.0, gt=0, le=100000, description="Reads (status GETs, event streams, /v1/models) per second per key."
    )
    gateway_read_burst: int = Field(400, ge=1, le=100000, description="Reads a key may make at once.")
    gateway_key_queue_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The most of a queue's admission bound one API key's queued jobs may hold (a key's policy can set "
        "an absolute max_queued instead). Past it that key gets 429 with Retry-After while others are still "
        "admitted: one tenant cannot fill the queue that everyone's admission is measured against.",
    )
    gateway_max_streams_per_key: int = Field(
        256,
        ge=1,
        le=100000,
        description="Open event streams, streamed completions and waiting reads one key may hold per gateway "
        "process: one per user waiting for an answer behind a frontend's key.",
    )
    gateway_max_connections: int = Field(
        2000, ge=10, le=1_000_000, description="Connections a gateway process serves at once (503 past it)."
    )
    gateway_trusted_hosts: str = Field(
        "",
        description="Comma-separated Host names a gateway in local-only mode (no API keys) answers besides "
        "localhost and loopback addresses: any other Host is refused (DNS rebinding).",
    )

    # --- Logging -------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="Log level of workers and the gateway: DEBUG (an event per job), INFO (an event per batch, "
        "naming its jobs, and per failed job), WARNING, ERROR.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a TTY, JSON lines otherwise."
    )
    tracing_trust_inbound: bool = Field(
        True,
        description="The gateway continues a caller's trace (its traceparent, tracestate and baggage headers): a "
        "traced frontend sees one trace from its click to the worker. false: every request starts a trace of its "
        "own, and callers cannot choose the trace ids of the gateway's spans (a public gateway).",
    )
    tracing: Literal["off", "otlp", "console"] = Field(
        "off",
        description="OpenTelemetry traces of every chat, gateway -> job -> batch -> stages (the otel extra): otlp "
        "exports to OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318), console prints spans. A process "
        "that already set up an OpenTelemetry SDK keeps its own. off costs nothing.",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(tuple(f"{s}://" for s in SCHEMES)):
            raise ValueError("must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://")
        parse_sentinel(value)  # a malformed Sentinel URL says how here, at start-up
        return value

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, value: str) -> str:
        parse_cpus(value)
        return value.strip()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"cpu", "cuda", "mps", "auto"}:
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError("must be cpu, cuda, cuda:N, mps or auto")

    @model_validator(mode="after")
    def _lease_outlasts_beats(self) -> Settings:
        # Race named here: a lease no longer than two beats expires between two renewals when one
        # beat is late, and a peer recovers a batch that is still running (computed twice).
        if self.lease_seconds is not None and self.lease_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must be more than 2 x heartbeat_seconds "
                f"({self.heartbeat_seconds}): raise LVM_LEASE_SECONDS or lower LVM_HEARTBEAT_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _waitaof_waits_for_the_next_fsync(self) -> Settings:
        # WAITAOF on appendfsync-everysec nodes answers after their next once-a-second fsync: at the
        # 500 ms that suits WAIT, a submit to a healthy master and replica was refused as
        # unconfirmed (seen on Valkey 8 while writing tests/test_gateway_edges.py). A value the
        # operator set is kept.
        if self.producer_wait_aof and "producer_wait_ms" not in self.model_fields_set:
            self.producer_wait_ms = 1500
        return self

    @model_validator(mode="after")
    def _keys_need_a_secret(self) -> Settings:
        if self.gateway_api_keys.strip() and not comma_list(self.gateway_secret):
            raise ValueError(
                "LVM_GATEWAY_API_KEYS is set but LVM_GATEWAY_SECRET is not: the gateway keys owner ids with it. "
                "Generate one: python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return self

    @property
    def lease_s(self) -> float:
        return self.lease_seconds or 3 * self.heartbeat_seconds

    def gateway_model_names(self) -> list[str]:
        return comma_list(self.gateway_models) or sorted(self.models)

    def queue_name(self, model: str) -> str:
        return f"{self.queue_prefix}{model}"

    def model_for_queue(self, queue: str) -> str | None:
        if queue.startswith(self.queue_prefix):
            return queue[len(self.queue_prefix) :]
        return None


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning pydantic's error into one line per bad ``LVM_*`` variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            if not err["loc"]:  # a check across fields: its message names them
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            field = "__".join(str(part) for part in err["loc"]).upper()
            got = err.get("input")
            shown = safe_url(got) if isinstance(got, str) else got  # never echo a password
            lines.append(f"{ENV_PREFIX}{field}: {err['msg']} (got {shown!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
