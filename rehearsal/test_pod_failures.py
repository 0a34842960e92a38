"""A pod that fails fails the rehearsal with a message naming the pod and the cause: one
deliberately broken spec per way a first deployment breaks (a bad command, a missing
environment variable, a volume the pod's user cannot write). The specs are the ones the
kubernetes runtime builds (the KubernetesPodOperator's own pod), each broken in one place."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from fgclip.config import Params
from fgclip.orchestration.kubernetes import build_pod_spec
from rehearsal.podman import LocalNamespace, PodFailed

UNWRITABLE_CLAIM = "fgclip-rehearsal-root-owned"


def _settings(params: dict[str, Any], **changes: Any) -> Any:
    return Params.model_validate(params).kubernetes.model_copy(update=changes)


def _fails(namespace: LocalNamespace, spec: dict[str, Any]) -> PodFailed:
    with pytest.raises(PodFailed) as caught:
        namespace.run_pod(spec, timeout_s=300)
    return caught.value


def test_a_bad_command_names_the_pod_and_the_missing_program(namespace: LocalNamespace, params: dict[str, Any]) -> None:
    spec = build_pod_spec("dataset", ["fgclip", "dataset", "--out", "data/dataset"], _settings(params))
    spec["spec"]["containers"][0]["command"] = ["fgclipp"]  # a typo in the image's entrypoint
    error = _fails(namespace, spec)
    name = spec["metadata"]["name"]
    assert str(error).startswith(f"pod {name} failed: ")
    assert "fgclipp" in str(error) and "not found" in str(error), str(error)


def _control_pod(settings: Any, workspace: str, step: list[str]) -> dict[str, Any]:
    """The pod of a control step in a DAG run's workspace, as fgclip.orchestration.tasks builds
    it (XCom sidecar included)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from fgclip.orchestration.control import POD_XCOM_FILE
    from fgclip.orchestration.kubernetes import _OFFLINE_KUBECONFIG, pod_operator_kwargs, to_dict
    from fgclip.orchestration.tasks.pods import CONTROL_MODULE

    kwargs = pod_operator_kwargs("publish", ["fgclip", "--help"], settings)
    kwargs.update(
        cmds=["python", "-m", CONTROL_MODULE],
        arguments=["--workspace", workspace, "--xcom-file", POD_XCOM_FILE, *step],
        do_xcom_push=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "kubeconfig"
        config.write_text(_OFFLINE_KUBECONFIG)
        operator = KubernetesPodOperator(task_id="publish", in_cluster=False, config_file=str(config), **kwargs)
        return to_dict(operator.build_pod_request_obj())


def test_a_missing_environment_variable_names_the_pod_and_what_is_missing(
    namespace: LocalNamespace, params: dict[str, Any], data_build: Any
) -> None:
    """The publish step in the data build's run workspace, its pod not given the S3 Secret (no
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): the push to the DVC remote cannot sign."""
    spec = _control_pod(_settings(params, env_secrets=[]), data_build.run_workdir, ["publish"])
    error = _fails(namespace, spec)
    assert str(error).startswith(f"pod {spec['metadata']['name']} failed: container base exited with code")
    assert "credentials" in str(error).lower(), str(error)


def test_an_unwritable_volume_names_the_pod_and_the_denied_path(
    namespace: LocalNamespace, params: dict[str, Any]
) -> None:
    namespace.create_volume(UNWRITABLE_CLAIM, owner=0)  # a claim whose files belong to root
    try:
        spec = build_pod_spec(
            "dataset",
            ["fgclip", "dataset", "--out", "data/dataset"],
            _settings(params, workspace_claim=UNWRITABLE_CLAIM),
        )
        error = _fails(namespace, spec)
    finally:
        namespace.remove_volume(UNWRITABLE_CLAIM)
    assert str(error).startswith(f"pod {spec['metadata']['name']} failed: container base exited with code")
    assert "Permission denied" in str(error) and "data" in str(error), str(error)
