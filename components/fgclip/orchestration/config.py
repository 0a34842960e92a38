"""The `orchestration` and `kubernetes` sections: where and how each stage runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgclip.core.config import S3Config, Section


class OrchestrationConfig(Section):
    """Airflow DAGs over the dvc.yaml stages: where and how each stage command runs."""

    runtime: Literal["local", "kubernetes"] = Field(
        "local",
        description="local: each task runs the stage command as a subprocess on the Airflow worker; "
        "kubernetes: each task is a pod on its pool preset (env FGCLIP_RUNTIME wins)",
    )
    workspace: str | None = Field(
        None,
        description="DVC project folder the local runtime runs the commands in; None: the project holding "
        "dags/ (env FGCLIP_WORKSPACE wins)",
    )
    data_last_stage: str = Field(
        "qc", description="the data build DAG runs the dvc.yaml stages up to this one, the train DAG the rest"
    )
    fan_out: tuple[str, ...] = Field(
        ("recaption", "detect", "negatives"),
        description="stages run once per shard group, with --shards appended to their command",
    )
    dataset_manifest: str = Field(
        "data/dataset/manifest.json",
        description="the dataset manifest (written by the dataset stage) whose shards the fan-out splits into groups",
    )
    shard_group_size: int = Field(2, ge=1, description="shards per mapped task")
    fan_out_in_process: bool = Field(
        True,
        description="local runtime: a shard group's command runs in its task's own process (forked with the "
        "modules loaded: see fgclip.orchestration.preload) instead of a new interpreter",
    )
    dvc_remote: str = Field("storage", description="DVC remote the publish task pushes to")
    dvc_remote_url: str | None = Field(
        ".cache/dvc-remote",
        description="that remote's URL: s3://bucket/prefix on a cluster, a folder (relative to the "
        "workspace) on the embedded default; None: the remote as .dvc/config has it "
        "(env FGCLIP_DVC_REMOTE_URL wins)",
    )
    runs_dir: str = Field(
        ".fgclip/runs",
        description="where each DAG run gets its own workspace (a git worktree of the project, relative to it): "
        "runs never touch the checkout or each other",
    )
    dvc_cache_dir: str | None = Field(
        None,
        description="the DVC cache every run workspace shares (relative to the project); None: the project's "
        ".dvc/cache. Outputs are linked from it, never copied",
    )
    git_identity: str = Field(
        "fgclip pipeline <fgclip-pipeline@localhost>",
        pattern=r"^[^<>]+ <[^<>]+>$",
        description="author of the commits that record dataset versions and trained models",
    )
    dataset_tag: str = Field("dataset/{version}", description="git tag of a published dataset version")
    model_tag: str = Field("model/{name}/v{version}", description="git tag of a registered model version")
    max_active_runs: int = Field(4, ge=1, description="DAG runs at once per DAG (each works in its own run workspace)")
    pools: dict[str, int] = Field(
        default_factory=lambda: {"fgclip-cpu": 4, "fgclip-gpu": 8, "fgclip-npu": 8},
        description="Airflow pool per accelerator family (fgclip-<family>) and its slots: at most this many "
        "tasks of that family run or wait for a pod at once, whatever the number of shard groups",
    )
    dataset_asset: str = Field(
        "fgclip_dataset", description="Airflow Asset the data build emits and the train DAG is scheduled on"
    )
    control_component: str = Field(
        "publish",
        description="kubernetes runtime: the kubernetes.component_pools entry whose "
        "(cpu) pool runs the control pods (shard groups, publish, checkout)",
    )
    data_form: tuple[str, ...] = Field(
        (
            "dataset.name",
            "dataset.source",
            "dataset.location",
            "dataset.urls.path",
            "dataset.heldout_shards",
            "demo.seed",
            "demo.train_shards",
            "recaption.backend",
            "recaption.hf.model",
            "recaption.openai.base_url",
            "recaption.openai.model",
            "detect.extractor",
            "detect.backend",
            "detect.owlv2.model",
            "detect.grounding_dino.model",
            "detect.yolo_world.weights",
            "negatives.backend",
            "negatives.hf.model",
            "negatives.openai.base_url",
            "negatives.openai.model",
            "negatives.count",
            "qc.sample_size",
            "qc.max_noise_upper",
        ),
        description="params.yaml keys shown in the data build's trigger form (each backend with the model it needs, "
        "so a run switches to real models from the UI)",
    )
    train_form: tuple[str, ...] = Field(
        ("train.recipe", "registry.require_approval"),
        description="params.yaml keys shown in the train DAG's trigger form",
    )
    max_nodes: int = Field(64, ge=1, description="upper bound of the train DAG's number-of-nodes field")
    retries: int = Field(1, ge=0, description="task retries after a crash (never after a user error or a failed gate)")
    retry_delay_s: int = Field(30, ge=0)
    task_timeout_s: int = Field(
        86400, ge=60, description="a stage or control task that runs longer fails (its command is stopped)"
    )
    log_progress_every_s: float = Field(30.0, gt=0.0, description="progress bars reach the task log at most this often")
    kill_grace_s: float = Field(
        10.0, gt=0.0, description="a killed task's command gets SIGTERM, then SIGKILL after this"
    )
    s3: S3Config = S3Config()


class Toleration(Section):
    """A pod toleration (the Kubernetes fields, snake_case)."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"

    @model_validator(mode="after")
    def _value_matches_operator(self) -> Toleration:
        if (self.operator == "Equal") != (self.value is not None):
            raise ValueError(f"toleration {self.key!r}: operator Equal needs a value, Exists takes none")
        return self


class HostMount(Section):
    """A read-only hostPath mount, e.g. the Ascend driver the NPU device plugin does not inject."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    host_path: str = Field(pattern=r"^/")
    mount_path: str = Field(pattern=r"^/")
    type: Literal["Directory", "File", "DirectoryOrCreate", "FileOrCreate", ""] = "Directory"


# Kubernetes resource quantities: 500m, 2, 1.5, 64Gi, 512M, ...
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"


class PoolPreset(Section):
    """Where a component's pod lands and what it gets: one preset per node pool."""

    family: Literal["npu", "gpu", "cpu"] = Field(
        description="accelerator family: picks the image from kubernetes.images"
    )
    accelerator_resource: str | None = Field(
        None, description="extended resource of the device plugin, e.g. huawei.com/Ascend910"
    )
    accelerators_per_pod: int = Field(
        0, ge=0, description="devices per component pod (training nodes use trainer.procs_per_node)"
    )
    cpu: str = Field(pattern=QUANTITY, description="CPU request per component pod")
    memory: str = Field(pattern=QUANTITY, description="memory request and limit per component pod")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    scheduler_name: str | None = Field(None, description="None: the default scheduler")
    runtime_class_name: str | None = Field(
        None,
        description="RuntimeClass of this pool's pods, e.g. `ascend`: the Ascend Docker Runtime mounts the NPU "
        "driver into exactly the pods that ask for NPUs, so no pod needs a hostPath and the namespace stays "
        "at the baseline Pod Security level",
    )
    shm_size: str = Field(
        "1Gi", pattern=QUANTITY, description="size of the in-memory /dev/shm (DataLoader workers, collectives)"
    )
    host_mounts: tuple[HostMount, ...] = Field(
        (),
        description="read-only hostPath mounts of this pool's pods only (clusters without a device runtime "
        "that injects the driver); they need a namespace whose Pod Security level admits hostPath",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="plain settings for this pool's runtime (no secrets: those come from Secrets)"
    )

    @model_validator(mode="after")
    def _accelerator(self) -> PoolPreset:
        if self.family == "cpu" and (self.accelerator_resource or self.accelerators_per_pod):
            raise ValueError("a cpu pool takes no accelerator_resource and accelerators_per_pod 0")
        if self.family != "cpu" and not (self.accelerator_resource and self.accelerators_per_pod >= 1):
            raise ValueError(f"a {self.family} pool needs accelerator_resource and accelerators_per_pod >= 1")
        return self


ASCEND_DRIVER_MOUNTS = (
    HostMount(name="ascend-driver", host_path="/usr/local/Ascend/driver", mount_path="/usr/local/Ascend/driver"),
    HostMount(name="ascend-dcmi", host_path="/usr/local/dcmi", mount_path="/usr/local/dcmi"),
    HostMount(name="npu-smi", host_path="/usr/local/bin/npu-smi", mount_path="/usr/local/bin/npu-smi", type="File"),
    HostMount(
        name="ascend-install-info",
        host_path="/etc/ascend_install.info",
        mount_path="/etc/ascend_install.info",
        type="File",
    ),
)


#: Node labels of the Ascend device plugin (MindCluster): 910A and 910B nodes both offer
#: huawei.com/Ascend910, so the chip generation is told apart by the accelerator type.
ASCEND_910A = {"accelerator": "huawei-Ascend910", "accelerator-type": "module"}
ASCEND_910B = {"accelerator": "huawei-Ascend910", "accelerator-type": "module-910b-8"}


def _npu_pool(node_selector: dict[str, str]) -> PoolPreset:
    return PoolPreset(
        family="npu",
        accelerator_resource="huawei.com/Ascend910",
        accelerators_per_pod=1,
        cpu="8",
        memory="64Gi",
        node_selector=node_selector,
        tolerations=(Toleration(key="huawei.com/Ascend910"),),
        scheduler_name="volcano",
        runtime_class_name="ascend",
        shm_size="16Gi",
        env={"HCCL_CONNECT_TIMEOUT": "1200", "ASCEND_GLOBAL_LOG_LEVEL": "3"},
    )


def _default_pools() -> dict[str, PoolPreset]:
    return {
        "npu": _npu_pool(ASCEND_910B),
        "npu910a": _npu_pool(ASCEND_910A),
        "gpu": PoolPreset(
            family="gpu",
            accelerator_resource="nvidia.com/gpu",
            accelerators_per_pod=1,
            cpu="8",
            memory="64Gi",
            node_selector={"nvidia.com/gpu.present": "true"},
            tolerations=(Toleration(key="nvidia.com/gpu"),),
            shm_size="16Gi",
            env={"NCCL_DEBUG": "WARN"},
        ),
        "cpu": PoolPreset(
            family="cpu", cpu="2", memory="8Gi", node_selector={"kubernetes.io/os": "linux"}, shm_size="1Gi"
        ),
    }


def _default_component_pools() -> dict[str, str]:
    return {
        "dataset": "cpu",
        "recaption": "npu",
        "detect": "gpu",
        "negatives": "npu",
        "qc": "cpu",
        "init_model": "cpu",
        "train_stage1": "npu",
        "train_stage2": "npu",
        "eval": "gpu",
        "register": "cpu",
        "publish": "cpu",
    }


class TrainerSettings(Section):
    """Multi-node training as a Kubeflow Trainer (v2.3+) TrainJob on a torch runtime."""

    runtime_name: str = Field("fgclip-torch-deepspeed", description="the TrainingRuntime k8s/base installs")
    runtime_kind: Literal["TrainingRuntime", "ClusterTrainingRuntime"] = "TrainingRuntime"
    num_nodes: int = Field(2, ge=1)
    procs_per_node: int = Field(
        8,
        ge=1,
        description="set explicitly: Trainer's 'auto' counts GPUs only, never NPUs; "
        "accelerator pools get this many devices per node",
    )
    cpu_per_node: str = Field("64", pattern=QUANTITY)
    memory_per_node: str = Field("512Gi", pattern=QUANTITY)
    patch_manager: str = Field(
        "fgclip.orchestration",
        min_length=1,
        max_length=253,
        description="owner key of the TrainJob's runtimePatches entry",
    )
    poll_interval_s: float = Field(30.0, gt=0.0)
    timeout_s: float = Field(
        259200.0,
        ge=1.0,
        description="the TrainJob's activeDeadlineSeconds (the cluster stops it) and how long Airflow waits",
    )
    deferrable: bool = Field(
        True, description="wait in Airflow's triggerer (no worker slot held); False: poll in the worker"
    )
    log_tail_lines: int = Field(200, ge=0, description="last log lines of each node copied into the Airflow task log")


class KubernetesConfig(Section):
    """Cluster runtime: images, namespace, identity, settings references and pool presets. Names
    here match the resources k8s/ creates; settings and credentials come from the ConfigMaps
    and Secrets named here, never from literals."""

    namespace: str = "fgclip"
    service_account: str = Field(
        "fgclip-runner", description="identity of component pods and training nodes (no API rights)"
    )
    images: dict[Literal["npu", "gpu", "cpu"], str] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]  # a dict literal of those three keys
            "cpu": "fgclip/fgclip-cpu:0.1.0",
            "gpu": "fgclip/fgclip-gpu:0.1.0",
            "npu": "fgclip/fgclip-npu:0.1.0",
        },
        description="one image per accelerator family, pinned by tag or digest (images/)",
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    env_configmaps: tuple[str, ...] = Field(
        ("fgclip-storage", "fgclip-mlflow"), description="loaded as environment (envFrom)"
    )
    env_secrets: tuple[str, ...] = Field(("fgclip-s3",), description="loaded as environment (envFrom): S3 credentials")
    params_configmap: str | None = Field(
        "fgclip-params",
        description="holds params.yaml (incl. the train section that makes the DeepSpeed config); None: image defaults",
    )
    params_mount_path: str = Field("/etc/fgclip/params", pattern=r"^/")
    workspace_claim: str = Field("fgclip-workspace", description="shared volume claim: data/, reports/, models/")
    workspace_path: str = Field("/workspace", pattern=r"^/", description="mount point; the images' WORKDIR")
    run_as_user: int = Field(1000, ge=1, description="non-root uid of the images' fgclip user")
    startup_timeout_s: int = Field(900, ge=1, description="pod start incl. pulling multi-GB images")
    pools: dict[str, PoolPreset] = Field(default_factory=_default_pools)
    component_pools: dict[str, str] = Field(
        default_factory=_default_component_pools, description="component -> default pool"
    )
    accelerator_pool: str | None = Field(
        None,
        description="send every component whose pool has an accelerator here instead: gpu or npu on a cluster "
        "with one accelerator family, cpu on a dev cluster",
    )
    trainer: TrainerSettings = TrainerSettings()

    @model_validator(mode="after")
    def _references(self) -> KubernetesConfig:
        unknown = sorted({pool for pool in self.component_pools.values()} - set(self.pools))
        if self.accelerator_pool is not None and self.accelerator_pool not in self.pools:
            unknown.append(self.accelerator_pool)
        if unknown:
            raise ValueError(f"kubernetes: pools {unknown} are not defined in kubernetes.pools {sorted(self.pools)}")
        for family in {preset.family for preset in self.pools.values()}:
            image = self.images.get(family)
            if image is None:
                raise ValueError(f"kubernetes.images has no {family} image")
            if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                raise ValueError(
                    f"kubernetes.images.{family} {image!r} must be pinned by a tag (not latest) or a digest"
                )
        return self

    def pool_for(self, component: str) -> str:
        if component not in self.component_pools:
            raise KeyError(f"component {component!r} has no pool; known: {sorted(self.component_pools)}")
        pool = self.component_pools[component]
        if self.accelerator_pool is not None and self.pools[pool].family != "cpu":
            return self.accelerator_pool
        return pool
