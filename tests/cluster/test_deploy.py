"""The deployment descriptions: the Serve config and KubeRay RayService in deploy/ build the
application they describe (parsed by the same builder Ray calls), and the CLI's options land in
the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gemmaserve.cluster.deploy import ClusterSpec, build_app, spec_from_config

ROOT = Path(__file__).resolve().parents[2]


def _apps(doc: dict) -> list[dict]:
    return doc["applications"]


@pytest.mark.parametrize("path", ["deploy/serve-config.yaml", "deploy/kuberay-rayservice.yaml"])
def test_deploy_files_build_their_application(path, demo_dir, tmp_path):
    doc = yaml.safe_load((ROOT / path).read_text())
    if doc.get("kind") == "RayService":
        assert doc["apiVersion"] == "ray.io/v1"
        assert doc["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
        doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
    [app] = _apps(doc)
    assert app["import_path"] == "gemmaserve.cluster.deploy:app_builder"
    args = dict(app["args"], model=str(demo_dir))
    for key in ("api_keys_file", "providers"):  # secrets mounted in the pod: local stand-ins here
        if key in args:
            (tmp_path / key).write_text("0" * 64 + "\n" if key == "api_keys_file" else '{"providers": []}')
            args[key] = str(tmp_path / key)
    spec = spec_from_config(args)
    assert spec.replicas == app["args"]["replicas"] and spec.gpus_per_replica == app["args"]["gpus_per_replica"]
    assert spec.serve_args["device"] == "cuda" and spec.serve_args["api_keys_file"] is None
    if "autoscale_max" in app["args"]:
        assert spec.autoscaling["max_replicas"] == app["args"]["autoscale_max"]
        assert spec.autoscaling["target_ongoing_requests"] == app["args"]["autoscale_target"]
        assert len(spec.ingress.api_key_hashes) == 1
    from ray import serve

    assert isinstance(build_app(spec), serve.Application)


def test_spec_endpoints_and_validation(demo_dir):
    spec = spec_from_config({"model": str(demo_dir), "replicas": 3, "max_model_len": 512, "no_sticky": True})
    assert [ep.tag for ep in spec.replica_endpoints()] == [f"gemmaserve/replica-{i}" for i in range(3)]
    assert all(ep.context_length == 512 and ep.deployment for ep in spec.replica_endpoints())
    assert spec.ingress.sticky_ttl_s == 0.0 and spec.autoscaling is None
    with pytest.raises(ValueError):
        ClusterSpec(serve_args={}, replicas=0)
