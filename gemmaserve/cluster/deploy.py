"""The Ray Serve application: N engine-replica deployments and the ingress deployment, their
resources, health checks and queue-depth autoscaling; `app_builder` is the import path a
`serve run` config or a KubeRay RayService points at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray import serve

from gemmaserve.cluster.endpoints import Endpoint
from gemmaserve.cluster.ingress import Ingress, IngressConfig, create_ingress_app
from gemmaserve.cluster.replica import EngineReplica, ReplicaSpec
from gemmaserve.cluster.transport import HttpTransport, ReplicaTransport

APP_NAME = "gemmaserve"
TAG_PROVIDER = "gemmaserve"  # replicas answer as gemmaserve/replica-<i>


@dataclass(frozen=True)
class ClusterSpec:
    """Everything the application is built from (picklable: Ray ships it to the ingress)."""

    serve_args: dict[str, Any]  # the `serve` options every replica loads its engine with
    replicas: int = 1
    cpus_per_replica: float = 1.0  # Ray's scheduling share per replica
    threads_per_replica: int = 1  # torch threads inside each replica
    gpus_per_replica: float = 0.0
    # Ray Serve autoscaling per replica endpoint (min_replicas, max_replicas,
    # target_ongoing_requests, ...); None: exactly one Serve replica per endpoint.
    autoscaling: dict[str, Any] | None = None
    max_ongoing_requests: int = 64  # per Serve replica; the engine batches, so well above Serve's default 5
    upstream: tuple[Endpoint, ...] = ()
    ingress: IngressConfig = field(default_factory=lambda: IngressConfig(default_model="google/gemma-4-26b-a4b-it"))
    model_ids: frozenset[str] = frozenset()
    context_length: int = 262_144
    quantization: str = "bf16"
    prompt_price_per_m: float = 0.06
    completion_price_per_m: float = 0.33

    def __post_init__(self) -> None:
        if self.replicas < 0 or (self.replicas == 0 and not self.upstream):
            raise ValueError("need at least one replica or one upstream provider")
        if self.threads_per_replica < 1 or self.cpus_per_replica < 0:
            raise ValueError("threads per replica must be >= 1 and CPUs >= 0")

    def replica_endpoints(self) -> list[Endpoint]:
        return [Endpoint(tag=f"{TAG_PROVIDER}/replica-{i}", models=self.model_ids, deployment=f"replica-{i}",
                         prompt_price_per_m=self.prompt_price_per_m, completion_price_per_m=self.completion_price_per_m,
                         quantization=self.quantization, context_length=self.context_length)
                for i in range(self.replicas)]


def _count_tokens(serve_args: dict[str, Any]):
    """A prompt sizer from the model's tokenizer (template markup not counted: an estimate for
    the context filter); None when the tokenizer cannot be read here."""
    try:
        from gemmaserve.model.hub import resolve_model_path
        from gemmaserve.tokenizer import Tokenizer

        tok = Tokenizer.from_dir(resolve_model_path(serve_args["model"]))
    except Exception:
        return None
    return lambda text: len(tok.encode(text))


@serve.ingress()
class IngressDeployment:
    """The ingress as a Serve deployment: the bound replica deployments arrive as handles."""

    def __init__(self, spec: ClusterSpec, *replica_handles: Any):
        import httpx

        self.spec = spec
        endpoints = spec.replica_endpoints() + list(spec.upstream)
        transports: dict[str, Any] = {}
        probes: dict[str, Any] = {}
        for ep, handle in zip(spec.replica_endpoints(), replica_handles):
            transports[ep.tag] = ReplicaTransport(handle)
            probes[ep.tag] = (lambda h: lambda: h.check_health.remote())(handle)
        client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=600.0))
        for ep in spec.upstream:
            transports[ep.tag] = HttpTransport(ep, client)
        self.ingress = Ingress(spec.ingress, endpoints, transports, probes, _count_tokens(spec.serve_args))

    def __serve_build_asgi_app__(self):
        return create_ingress_app(self.ingress)


def build_app(spec: ClusterSpec) -> Any:
    """The Serve application: `replica-<i>` deployments (each one endpoint) and `ingress`."""
    replica = serve.deployment(EngineReplica)
    bound = []
    for i, ep in enumerate(spec.replica_endpoints()):
        opts: dict[str, Any] = dict(
            name=f"replica-{i}",
            ray_actor_options={"num_cpus": spec.cpus_per_replica, "num_gpus": spec.gpus_per_replica},
            max_ongoing_requests=spec.max_ongoing_requests,
            # A replica whose engine stops answering is replaced within ~10 s; a killed process
            # is noticed by Ray at once and restarted.
            health_check_period_s=2.0, health_check_timeout_s=8.0, graceful_shutdown_timeout_s=5.0,
        )
        if spec.autoscaling:
            opts["autoscaling_config"] = dict(spec.autoscaling)
        else:
            opts["num_replicas"] = 1
        bound.append(replica.options(**opts).bind(ReplicaSpec(spec.serve_args, ep.tag, spec.threads_per_replica)))
    ingress = serve.deployment(IngressDeployment).options(
        name="ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(spec, *bound)


def spec_from_config(args: dict[str, Any]) -> ClusterSpec:
    """A ClusterSpec from `cluster serve` options given by long name (a Serve config's `args`)."""
    from gemmaserve.cluster.cli_cluster import build_parser, spec_from_args

    argv = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True or value == "true":
            argv.append(flag)
        elif value not in (False, None, "false"):
            argv += [flag, str(value)]
    return spec_from_args(build_parser().parse_args(argv))


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run|deploy` configs and KubeRay RayService: `import_path:
    gemmaserve.cluster.deploy:app_builder` with `cluster serve` options as `args` (model,
    replicas, cpus_per_replica, threads_per_replica, gpus_per_replica, autoscale_max, providers, ...)."""
    return build_app(spec_from_config(args))
