"""Offline validation of Kubernetes manifests for the cluster tests.

Core kinds (Pod, Deployment, Role, ...) are checked by kubernetes-validate against the
Kubernetes OpenAPI schemas in strict mode (unknown fields are errors). kubernetes-validate
knows no Kubeflow Trainer CRDs, so TrainJob and TrainingRuntime get a minimal JSON schema
written here from the Trainer v2.3 API types (apiVersion, kind, required fields, known keys
at every level this project writes); the Kubernetes objects nested in them (pod specs,
volumes, tolerations, resources, env, Job templates) are then checked strictly against the
core schemas too.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate.utils import schema_contents

K8S_VERSION = "1.35"
_STRICT_DIR = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict"
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def validate_core(document: dict[str, Any]) -> None:
    """Strict schema check of a core Kubernetes object; raises on any problem."""
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


_definitions_resource = None


def validate_definition(name: str, value: Any) -> None:
    """Strict check of a nested core object against one definition, e.g. ("podspec-v1", spec)."""
    global _definitions_resource
    if _definitions_resource is None:
        _definitions_resource = referencing.Resource.from_contents(
            schema_contents(f"{_STRICT_DIR}/_definitions.json", K8S_VERSION)
        )
    schema = schema_contents(f"{_STRICT_DIR}/{name}.json", K8S_VERSION)
    registry = referencing.Resource.from_contents(schema) @ (_definitions_resource @ referencing.Registry())
    jsonschema.validators.Draft202012Validator(schema, registry=registry).validate(value)


def _strings(max_items: int) -> dict[str, Any]:
    return {"type": "array", "maxItems": max_items, "items": {"type": "string"}}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}},
}
_LABELS_ONLY = _closed({"labels": {"type": "object"}, "annotations": {"type": "object"}})

# TrainJob.spec.runtimePatches[].trainingRuntimeSpec: only these pod fields may be patched.
_POD_SPEC_PATCH = _closed(
    {
        key: {}
        for key in (
            "serviceAccountName",
            "volumes",
            "initContainers",
            "containers",
            "imagePullSecrets",
            "securityContext",
            "nodeSelector",
            "affinity",
            "tolerations",
            "schedulingGates",
        )
    }
)
_CONTAINER_PATCH = _closed(
    {"name": {"type": "string", "minLength": 1}, "env": {}, "volumeMounts": {}, "securityContext": {}}, ("name",)
)

TRAINJOB_SCHEMA = _closed(
    {
        "apiVersion": {"const": TRAINER_API},
        "kind": {"const": "TrainJob"},
        "metadata": _METADATA,
        "spec": _closed(
            {
                "runtimeRef": _closed(
                    {
                        "name": {"type": "string", "minLength": 1, "maxLength": 253},
                        "apiGroup": {"const": "trainer.kubeflow.org"},
                        "kind": {"enum": ["TrainingRuntime", "ClusterTrainingRuntime"]},
                    },
                    ("name",),
                ),
                "initializer": {"type": "object"},
                "trainer": _closed(
                    {
                        "image": {"type": "string", "maxLength": 500},
                        "command": _strings(128),
                        "args": _strings(128),
                        "env": {"type": "array", "maxItems": 128},
                        "numNodes": {"type": "integer", "minimum": 1},
                        "resourcesPerNode": {"type": "object"},
                        "numProcPerNode": {"type": "integer", "minimum": 1},
                    }
                ),
                "runtimePatches": {
                    "type": "array",
                    "maxItems": 16,
                    "items": _closed(
                        {
                            "manager": {"type": "string", "minLength": 1, "maxLength": 253},
                            "time": {"type": "string"},
                            "trainingRuntimeSpec": _closed(
                                {
                                    "template": _closed(
                                        {
                                            "metadata": _LABELS_ONLY,
                                            "spec": _closed(
                                                {
                                                    "replicatedJobs": {
                                                        "type": "array",
                                                        "maxItems": 100,
                                                        "items": _closed(
                                                            {
                                                                "name": {
                                                                    "type": "string",
                                                                    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                                                },
                                                                "template": _closed(
                                                                    {
                                                                        "metadata": _LABELS_ONLY,
                                                                        "spec": _closed(
                                                                            {
                                                                                "template": _closed(
                                                                                    {
                                                                                        "metadata": _LABELS_ONLY,
                                                                                        "spec": _POD_SPEC_PATCH,
                                                                                    }
                                                                                )
                                                                            }
                                                                        ),
                                                                    }
                                                                ),
                                                            },
                                                            ("name",),
                                                        ),
                                                    }
                                                }
                                            ),
                                        }
                                    )
                                }
                            ),
                        },
                        ("manager",),
                    ),
                },
                "suspend": {"type": "boolean"},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "managedBy": {"enum": ["trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"]},
            },
            ("runtimeRef",),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

_PROC_PER_NODE = {"anyOf": [{"type": "integer", "minimum": 1}, {"enum": ["auto", "cpu", "gpu"]}]}

TRAINING_RUNTIME_SCHEMA = _closed(
    {
        "apiVersion": {"const": TRAINER_API},
        "kind": {"enum": ["TrainingRuntime", "ClusterTrainingRuntime"]},
        "metadata": _METADATA,
        "spec": _closed(
            {
                "mlPolicy": _closed(
                    {
                        "numNodes": {"type": "integer", "minimum": 1},
                        "torch": _closed({"numProcPerNode": _PROC_PER_NODE, "elasticPolicy": {"type": "object"}}),
                        "mpi": {"type": "object"},
                        "flux": {"type": "object"},
                    }
                ),
                "podGroupPolicy": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": False,
                    "properties": {"coscheduling": {"type": "object"}, "volcano": {"type": "object"}},
                },
                "template": _closed(
                    {
                        "metadata": _LABELS_ONLY,
                        # A JobSet spec (jobset.x-k8s.io/v1alpha2).
                        "spec": _closed(
                            {
                                "replicatedJobs": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": _closed(
                                        {
                                            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                            "replicas": {"type": "integer", "minimum": 1},
                                            "dependsOn": {"type": "array"},
                                            "groupName": {"type": "string"},
                                            "template": {"type": "object"},
                                        },
                                        ("name", "template"),
                                    ),
                                },
                                "network": {"type": "object"},
                                "successPolicy": {"type": "object"},
                                "failurePolicy": _closed(
                                    {
                                        "maxRestarts": {"type": "integer", "minimum": 0},
                                        "rules": {"type": "array"},
                                        "restartStrategy": {"type": "string"},
                                    }
                                ),
                                "startupPolicy": {"type": "object"},
                                "coordinator": {"type": "object"},
                                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                            },
                            ("replicatedJobs",),
                        ),
                    }
                ),
            }
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)


def validate_trainjob(document: dict[str, Any]) -> None:
    jsonschema.validate(document, TRAINJOB_SCHEMA)
    trainer = document["spec"].get("trainer", {})
    for env in trainer.get("env", []):
        validate_definition("envvar-v1", env)
    if "resourcesPerNode" in trainer:
        validate_definition("resourcerequirements-v1", trainer["resourcesPerNode"])
    for patch in document["spec"].get("runtimePatches", []):
        for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            pod = job["template"]["spec"]["template"]
            for container in pod["spec"].get("containers", []):
                jsonschema.validate(container, _CONTAINER_PATCH)
            # A patch is a partial pod spec: check it as a whole one (containers need only a name).
            spec = copy.deepcopy(pod["spec"])
            spec.setdefault("containers", [])
            validate_definition("podspec-v1", spec)
            validate_definition("objectmeta-meta-v1", pod.get("metadata", {}))


def validate_training_runtime(document: dict[str, Any]) -> None:
    jsonschema.validate(document, TRAINING_RUNTIME_SCHEMA)
    for job in document["spec"]["template"]["spec"]["replicatedJobs"]:
        validate_definition("jobtemplatespec-batch-v1", job["template"])


def validate_document(document: dict[str, Any]) -> None:
    """Any rendered document: Trainer CRDs by the schemas above, the rest strictly by kind."""
    if document.get("apiVersion") == TRAINER_API:
        if document["kind"] == "TrainJob":
            validate_trainjob(document)
        else:
            validate_training_runtime(document)
    else:
        validate_core(document)
