"""``edgezoo serve DIR --ray [ADDRESS] --replicas N``: the same app as N Ray Serve replicas.

Scaling out is Ray Serve's job, not ours: each replica is a Ray actor that loads the model
and builds exactly the app ``edgezoo serve`` runs (``server.create_app``: the same auth,
limits, batching and Host guard), and Ray's proxy routes requests to the replicas, restarts
the ones that die or fail ``check_health``, and adds or removes replicas within
``--min-replicas``/``--max-replicas`` by the requests each one holds.

Every response carries ``X-Edgezoo-Replica`` (Ray's replica id), so how load spreads is
visible from the client side, and a replica's log lines can be found in Ray's logs.

Ray is the ``cluster`` extra and is imported only inside the functions that need it, so
this module (and ``edgezoo serve --help``) imports without it. Like the rest of the runtime
it never imports torch.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from edgezoo.errors import ConfigError, missing_extra
from edgezoo.runtime.engine import DEFAULT_PREFILL_CHUNK

APP_NAME = "edgezoo"
DEPLOYMENT_NAME = "EdgezooReplica"
REPLICA_HEADER = "x-edgezoo-replica"
LOCAL = "local"  # `--ray` without an address: a private Ray instance, shut down on exit
HEALTH_CHECK_PERIOD_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 10.0
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2  # replicas pass no tensors through Ray: keep it small


@dataclass(frozen=True)
class ReplicaOptions:
    """What every replica needs to build the app ``edgezoo serve`` builds (plain values:
    Ray pickles them to each replica)."""

    model_dir: str
    backend: str = "auto"
    variant: str = "auto"
    threads: int = 0  # ONNX Runtime intra-op threads; 0: one per CPU the replica reserves
    api_key: str | None = None
    model_name: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_prompt_tokens: int | None = None
    max_tokens_limit: int | None = None
    request_timeout_s: float = 60.0
    batching: str = "auto"
    parallel: int | None = None
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    draft: str | None = None  # a draft model dir or "prompt-lookup": speculative decoding
    draft_variant: str = "auto"  # the draft dir's variant
    draft_threads: int | None = None  # the draft's threads (see runtime.load)
    draft_tokens: int = 4
    max_draft_tokens: int | None = None
    lookup_corpus: str | None = None  # prompt lookup's corpus (see runtime.load)

    @property
    def slots(self) -> int:
        """Requests one replica decodes at once (continuous slots or the static batch)."""
        return max(self.parallel or 0, self.max_batch)


@dataclass(frozen=True)
class Scaling:
    """How many replicas, and what each reserves. ``max_replicas`` switches autoscaling on."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    cpus_per_replica: float = 1.0

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def check(self) -> None:
        """One clear error for counts Ray would refuse with a trace."""
        if self.replicas < 1:
            raise ConfigError(f"--replicas {self.replicas}: use 1 or more.")
        if self.cpus_per_replica <= 0:
            raise ConfigError(f"--cpus-per-replica {self.cpus_per_replica}: use a number > 0.")
        if not self.autoscaling:
            if self.min_replicas is not None or self.target_ongoing_requests is not None:
                raise ConfigError(
                    "--min-replicas and --target-ongoing-requests tune autoscaling, which "
                    "--max-replicas switches on: pass --max-replicas too."
                )
            return
        low = 1 if self.min_replicas is None else self.min_replicas
        if low < 0 or self.max_replicas < max(low, 1):
            raise ConfigError(
                f"--min-replicas {low} / --max-replicas {self.max_replicas}: need "
                "0 <= min <= max and max >= 1."
            )
        if not low <= self.replicas <= self.max_replicas:
            raise ConfigError(
                f"--replicas {self.replicas} is where autoscaling starts: keep it between "
                f"--min-replicas {low} and --max-replicas {self.max_replicas}."
            )
        if self.target_ongoing_requests is not None and self.target_ongoing_requests <= 0:
            raise ConfigError(
                f"--target-ongoing-requests {self.target_ongoing_requests}: use a number > 0."
            )


def deployment_options(opts: ReplicaOptions, scaling: Scaling) -> dict[str, Any]:
    """The options of ``serve.deployment`` for these replicas.

    ``max_ongoing_requests`` is the connection limit ``edgezoo serve`` gives uvicorn: the
    replica's queue, the requests it decodes, and room for the ones it refuses itself (503
    + Retry-After, OpenAI's error body) and for /health. Ray sends a replica no more than
    that and queues at most ``max_queue`` more per proxy before it answers 503 itself (in
    plain text, as uvicorn does past its limit), so a flood is refused at the front instead
    of piling up in the router. Autoscaling aims at ``target_ongoing_requests`` per
    replica (default: the replica's decoding slots, the load it batches without queueing).
    """
    from edgezoo.runtime.server import connection_limit

    scaling.check()
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": connection_limit(opts.max_queue, opts.slots),
        "max_queued_requests": opts.max_queue,
        "ray_actor_options": {"num_cpus": scaling.cpus_per_replica},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": opts.request_timeout_s,
    }
    if scaling.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": 1 if scaling.min_replicas is None else scaling.min_replicas,
            "initial_replicas": scaling.replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests or opts.slots,
        }
    else:
        options["num_replicas"] = scaling.replicas
    return options


def replica_threads(threads: int, cpus_per_replica: float) -> int:
    """Intra-op threads for one replica: as asked, else one per CPU it reserves, so that
    replicas sharing a machine do not each spread over all of its cores."""
    return threads if threads > 0 else max(1, round(cpus_per_replica))


# ---------------------------------------------------------------------- in a replica -------


class ReplicaHeaderMiddleware:
    """Pure ASGI: adds ``X-Edgezoo-Replica: <id>`` to every HTTP response (refusals too)."""

    def __init__(self, app: Any, replica_id: str) -> None:
        self.app = app
        self.value = replica_id.encode("latin-1")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.value)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def build_app(opts: ReplicaOptions, replica_id: str, cpus_per_replica: float = 1.0) -> Any:
    """Load the model and build the app ``edgezoo serve`` would serve for it, tagged with
    the replica's id. Runs inside each replica (and in tests, without Ray)."""
    from edgezoo.runtime.api import load
    from edgezoo.runtime.server import DEFAULT_MAX_TOKENS_LIMIT, create_app

    model = load(
        opts.model_dir,
        backend=opts.backend,
        variant=opts.variant,
        threads=replica_threads(opts.threads, cpus_per_replica),
        max_batch=opts.max_batch,
        draft=opts.draft,
        draft_variant=opts.draft_variant,
        draft_threads=opts.draft_threads,
        draft_tokens=opts.draft_tokens,
        max_draft_tokens=opts.max_draft_tokens,
        lookup_corpus=opts.lookup_corpus,
        expected_batch=opts.parallel or opts.max_batch,  # as `edgezoo serve`
    )
    max_prompt_tokens, max_tokens_limit = opts.max_prompt_tokens, opts.max_tokens_limit
    if hasattr(model, "context"):  # a language model: the same caps `edgezoo serve` sets
        max_prompt_tokens = max_prompt_tokens or model.context - 1
        max_tokens_limit = max_tokens_limit or min(model.context, DEFAULT_MAX_TOKENS_LIMIT)
    app = create_app(
        model,
        model_name=opts.model_name or Path(opts.model_dir).name,
        api_key=opts.api_key,
        max_queue=opts.max_queue,
        max_batch=opts.max_batch,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        request_timeout_s=opts.request_timeout_s,
        shutdown_timeout_s=opts.request_timeout_s,
        batching=opts.batching,
        parallel=opts.parallel,
        prefill_chunk=opts.prefill_chunk,
    )
    app.add_middleware(ReplicaHeaderMiddleware, replica_id=replica_id)
    return app


def worker_alive(app: Any) -> bool:
    """Whether the app's model worker runs and takes requests (what /health answers)."""
    batcher = app.state.context.batcher
    task = batcher.task if batcher is not None else None
    return task is not None and not task.done() and not batcher.closed


def make_deployment(opts: ReplicaOptions, scaling: Scaling) -> Any:
    """The bound Ray Serve application: one ``EdgezooReplica`` deployment whose ingress is
    the app ``build_app`` makes in each replica (``serve.ingress()`` late-bound: the model
    loads in the replica, never in the driver)."""
    from ray import serve

    @serve.ingress()
    class EdgezooReplica:
        def __init__(self, opts: ReplicaOptions, cpus_per_replica: float) -> None:
            self.opts = opts
            self.cpus = cpus_per_replica
            self.replica_id = serve.get_replica_context().replica_id.unique_id

        def __serve_build_asgi_app__(self) -> Any:
            self.edgezoo_app = build_app(self.opts, self.replica_id, self.cpus)
            return self.edgezoo_app

        async def check_health(self) -> None:
            """Ray replaces a replica whose model worker has stopped."""
            if not worker_alive(self.edgezoo_app):
                raise RuntimeError(f"replica {self.replica_id}: the model worker is not running")

    deployment = serve.deployment(EdgezooReplica, **deployment_options(opts, scaling))
    return deployment.bind(opts, scaling.cpus_per_replica)


# ---------------------------------------------------------------------- the driver ---------


def import_ray() -> tuple[Any, Any]:
    """``ray`` and ``ray.serve``, or the one-line error naming the extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise missing_extra("serve --ray", "cluster") from e
    return ray, serve


def check_model_dir(opts: ReplicaOptions, address: str) -> None:
    """Fail before Ray starts when the model cannot load here. On a cluster the replicas
    load it on their nodes, so a dir missing on this machine is only a warning."""
    from edgezoo.runtime.backends import resolve_backend
    from edgezoo.runtime.model_files import locate

    if address != LOCAL and not Path(opts.model_dir).is_dir():
        print(
            f"edgezoo serve: {opts.model_dir} is not on this machine; each Ray node must "
            "have it at this path.",
            file=sys.stderr,
        )
        return
    backend, _ = resolve_backend(opts.backend)
    locate(opts.model_dir, backend, opts.variant)


def start_ray(ray: Any, address: str, scaling: Scaling, log_level: str) -> None:
    """Start a private local Ray (light: no dashboard, a small object store, CPU slots for
    every replica) or join the cluster at ``address``."""
    level = logging.DEBUG if log_level == "debug" else logging.WARNING
    common = {"logging_level": level, "log_to_driver": log_level in ("info", "debug")}
    if address != LOCAL:
        ray.init(address=address, **common)
        return
    most = scaling.max_replicas or scaling.replicas
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, int(most * scaling.cpus_per_replica + 0.999)),
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        **common,
    )


def serve_on_ray(
    opts: ReplicaOptions,
    scaling: Scaling,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str = LOCAL,
    log_level: str = "info",
) -> None:
    """Serve ``opts.model_dir`` on Ray Serve until Ctrl-C / SIGTERM, then remove the app
    (and stop the private Ray instance, if this call started one)."""
    from edgezoo.runtime.server import check_bind

    check_bind(host, opts.api_key)  # before anything slow, as `edgezoo serve` does
    scaling.check()
    ray, serve = import_ray()
    opts = ReplicaOptions(**{**asdict(opts), "model_dir": str(Path(opts.model_dir).resolve())})
    check_model_dir(opts, address)
    app = make_deployment(opts, scaling)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        start_ray(ray, address, scaling, log_level)
        signal.signal(signal.SIGTERM, _interrupt)  # ray.init installed its own
        _run_app(serve, app, host, port, log_level)
        replicas = f"{scaling.replicas} replica{'s' if scaling.replicas > 1 else ''}"
        if scaling.autoscaling:
            low = 1 if scaling.min_replicas is None else scaling.min_replicas
            replicas += f" (autoscaling {low}-{scaling.max_replicas})"
        where = "a local Ray instance" if address == LOCAL else f"the Ray cluster at {address}"
        print(f"edgezoo serve: {replicas} on {where}, on http://{host}:{port}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("edgezoo serve: stopping the replicas …", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(ray, serve, address)


def _run_app(serve: Any, app: Any, host: str, port: int, log_level: str) -> None:
    """Start Serve's proxy on ``host:port`` and deploy; a replica that cannot start (a bad
    model dir on a node, say) becomes one error instead of Ray's retries and traces."""
    logging_config = {
        "log_level": "DEBUG" if log_level == "debug" else "WARNING",
        "enable_access_log": log_level in ("info", "debug"),
    }
    serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config=logging_config)
    except RuntimeError as e:
        raise ConfigError(
            f"the replicas did not start: {str(e).strip()[:2000]}\n"
            "Run `edgezoo serve DIR` without --ray to see the same error on this machine."
        ) from e


def _stop(ray: Any, serve: Any, address: str) -> None:
    """Remove what this call started. On a shared cluster only our app goes (other Serve
    apps stay); a private instance stops entirely, its processes with it."""
    if not ray.is_initialized():
        return
    try:
        if address == LOCAL:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    except Exception as e:  # a dying cluster must not hide the shutdown of the rest
        print(f"edgezoo serve: Ray Serve did not stop cleanly: {e}", file=sys.stderr)
    finally:
        ray.shutdown()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the server the way Ctrl-C does (cleanly)."""
    raise KeyboardInterrupt


def cmd_serve_ray(args: Any) -> int:
    """`edgezoo serve ... --ray`: the parsed flags to ``serve_on_ray``."""
    from edgezoo.runtime.cli import draft_of

    opts = ReplicaOptions(
        model_dir=args.model_dir,
        backend=args.backend,
        variant=args.variant,
        threads=args.threads,
        api_key=args.api_key,
        model_name=args.model_name or Path(args.model_dir).resolve().name,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit,
        request_timeout_s=args.timeout,
        batching=args.batching,
        parallel=args.parallel,
        prefill_chunk=args.prefill_chunk,
        draft=draft_of(args),
        draft_variant=args.draft_variant,
        draft_threads=args.draft_threads,
        draft_tokens=args.draft_tokens,
        max_draft_tokens=args.max_draft_tokens,
        lookup_corpus=args.lookup_corpus,
    )
    scaling = Scaling(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        cpus_per_replica=args.cpus_per_replica,
    )
    serve_on_ray(
        opts, scaling, host=args.host, port=args.port, address=args.ray, log_level=args.log_level
    )
    return 0
