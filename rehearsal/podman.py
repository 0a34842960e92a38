"""A cluster's namespace stood in for by podman on one machine, for the rehearsal.

What a Kubernetes namespace gives the project's pods, and what stands in for it here:

| cluster                                   | here                                                  |
|-------------------------------------------|-------------------------------------------------------|
| the workspace PersistentVolumeClaim       | a podman volume of the claim's name (files of uid 1000)|
| ConfigMaps (envFrom, params.yaml volume)  | `podman kube play --configmap` files                  |
| Secrets (envFrom)                         | podman secrets of the same name                       |
| a Pod                                     | `podman kube play` of the very Pod spec               |
| the pod network, headless Service DNS     | host network, or a podman network + hostAliases       |
| the XCom sidecar's image (alpine)         | the project's base image (it has `sh` and `sleep`)    |
| containerPort declarations                | left out (podman would publish them on the host)      |
| ConfigMap volumes, emptyDir volumes       | named volumes of that name (podman's way; /dev/shm is  |
|                                           | therefore shared by the pods of one machine); an      |
|                                           | emptyDir made world-writable (1777) as kubelet's is   |

A pod that fails raises PodFailed with the pod's name and the cause (the engine's refusal
to start it, or the container's exit code and the error its log ends with).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ENGINE_CONF = REPO / "images" / "engine" / "containers.conf"
BASE_IMAGE = "localhost/fgclip/debian-python:3.11-bookworm"
XCOM_SIDECAR = "airflow-xcom-sidecar"
XCOM_FILE = "/airflow/xcom/return.json"
RUN_AS = 1000
LOG_TAIL_LINES = 30
#: A Python exception's last line ("ValueError: ...") and lines that carry an error's detail.
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Exit|Interrupt)\b(:.*)?$")
_DETAIL = re.compile(r"(?i)\b(error|denied|not found|unable to|no such file|refused|invalid|missing)\b")
CAUSE_CHARS = 300


class PodFailed(RuntimeError):
    """A pod did not start or did not succeed; the message names the pod and the cause."""

    def __init__(self, pod: str, cause: str, logs: str = "") -> None:
        super().__init__(f"pod {pod} failed: {cause}")
        self.pod, self.cause, self.logs = pod, cause, logs


class Podman:
    """The podman CLI with the project's engine settings (images/engine/containers.conf)."""

    def __init__(self) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ENGINE_CONF))}

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None, capture: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            input=input,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args[:3])} ... failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()[-2000:]}"
            )
        return result

    def text(self, *args: str, **kwargs: Any) -> str:
        return self(*args, **kwargs).stdout.decode(errors="replace")

    def exists(self, kind: str, name: str) -> bool:
        # podman 4.3 has no `secret exists`; inspect answers for every kind
        return self(kind, "inspect", name, check=False).returncode == 0


def last_cause(logs: str) -> str:
    """Why a container stopped, from its log: the last exception it raised and the last line
    with an error's detail after it (a tool's own "ERROR: ..." inside the exception's
    message), else the last line."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    if not lines:
        return "no output"
    headers = [index for index, line in enumerate(lines) if _EXCEPTION.match(line)]
    start = headers[-1] if headers else 0
    details = [line for line in lines[start + 1 :] if _DETAIL.search(line)]
    parts = ([lines[start]] if headers else []) + details[-1:]
    if not parts:
        earlier = [line for line in lines if _DETAIL.search(line)]
        parts = earlier[-1:] or lines[-1:]
    return " | ".join(part[:CAUSE_CHARS] for part in parts)


def engine_refusal(output: str) -> str:
    """Why `kube play` refused a pod: the runtime's reason (a missing executable...), else the
    last specific error (a missing ConfigMap or Secret...), not the closing summary line."""
    found = re.search(r"unable to start container process: (.+?)(?:\]|$)", output, re.MULTILINE)
    if found:
        return found.group(1).strip()
    errors = [
        line.strip()
        for line in output.splitlines()
        if line.strip().startswith("Error:") and not re.search(r"failed to start \d+ containers", line)
    ]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return errors[-1] if errors else (lines[-1] if lines else "no reason given")


@dataclass
class PodResult:
    name: str
    exit_code: int
    seconds: float
    logs: str
    xcom: Any = None


@dataclass
class RunningPod:
    name: str
    main: str  # the main container's engine name: POD-CONTAINER
    started: float
    has_xcom: bool


@dataclass
class LocalNamespace:
    """ConfigMaps, Secrets and volumes of one rehearsal, and the pods run against them."""

    workdir: Path
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    network: str = "host"
    image_stand_ins: dict[str, str] = field(default_factory=dict)
    keep_failed: bool = False
    podman: Podman = field(default_factory=Podman)
    results: list[PodResult] = field(default_factory=list)
    _writable_empty_dirs: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ namespace objects

    def apply_secrets(self) -> None:
        """Each Secret as a podman secret, in the form `kube play` reads for envFrom secretRef
        (a JSON object of base64 values)."""
        for name, data in self.secrets.items():
            if self.podman.exists("secret", name):
                self.podman("secret", "rm", name)
            encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
            path = self.workdir / f"secret-{name}.json"
            path.write_text(json.dumps(encoded))
            path.chmod(0o600)
            self.podman("secret", "create", name, str(path))
            path.unlink()

    def remove_secrets(self) -> None:
        for name in self.secrets:
            self.podman("secret", "rm", name, check=False)

    def reset_configmap_volumes(self) -> None:
        """`kube play` keeps a ConfigMap mounted as a volume in a named volume of the
        ConfigMap's name and reuses it: drop those, so pods see this namespace's contents."""
        for name in self.configmaps:
            self.remove_volume(name)

    def configmap_files(self) -> list[Path]:
        files = []
        for name, data in self.configmaps.items():
            path = self.workdir / f"configmap-{name}.yaml"
            path.write_text(
                yaml.safe_dump(
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)},
                    sort_keys=False,
                )
            )
            files.append(path)
        return files

    def create_volume(self, name: str, source: Path | None = None, *, owner: int = RUN_AS) -> None:
        """A fresh volume standing in for a claim, holding `source`'s files owned by `owner`."""
        self.remove_volume(name)
        self.podman("volume", "create", name)
        # Settle the volume root's owner with a first mount (podman otherwise hands an empty
        # volume to the user of the first container that mounts it, as no storage class does).
        self._settle_volume_root(name, f"chown {owner}:{owner} /volume && chmod 755 /volume")
        if source is not None:
            with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
                archive = Path(scratch) / "volume.tar"
                with tarfile.open(archive, "w") as tar:

                    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
                        info.uid = info.gid = owner
                        info.uname = info.gname = ""
                        return info

                    for item in sorted(source.iterdir()):
                        tar.add(item, arcname=item.name, filter=owned)
                self.podman("volume", "import", name, str(archive))

    def _settle_volume_root(self, name: str, command: str) -> None:
        """Run `command` as root on the volume's root, mounted at /volume."""
        self.podman(
            "run", "--rm", "--user", "0:0", "--network", "none", "--volume", f"{name}:/volume", BASE_IMAGE,
            "sh", "-c", command,
        )  # fmt: skip

    def _make_empty_dirs_writable(self, spec: Mapping[str, Any]) -> None:
        """kubelet makes every emptyDir writable by any user (a Memory one at /dev/shm is a
        1777 tmpfs); podman's named volume of that name starts as root's 0755, where a non-root
        pod cannot create a semaphore (multiprocessing) or a DataLoader's shared memory."""
        for volume in spec["spec"].get("volumes", []):
            name = volume["name"]
            if "emptyDir" not in volume or name in self._writable_empty_dirs:
                continue
            if not self.podman.exists("volume", name):
                self.podman("volume", "create", name)
            self._settle_volume_root(name, "chmod 1777 /volume")
            self._writable_empty_dirs.add(name)

    def remove_volume(self, name: str) -> None:
        self._writable_empty_dirs.discard(name)
        if self.podman.exists("volume", name):
            self.podman("volume", "rm", "--force", name)

    def export_volume(self, name: str, target: Path) -> Path:
        """The volume's files, copied out into `target` (a plain folder on this machine)."""
        target.mkdir(parents=True, exist_ok=True)
        archive = target.with_suffix(".tar")
        self.podman("volume", "export", name, "--output", str(archive), timeout=900)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="tar")
        archive.unlink()
        return target

    # ------------------------------------------------------------------ pods

    def _adapted(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The spec as the engine runs it: stand-in images swapped in, and container ports
        left out (`kube play` publishes a containerPort on the host's every address; on a
        pod network every port of a pod is reachable anyway). Nothing else changes."""
        spec = json.loads(json.dumps(spec))
        for container in spec["spec"].get("containers", []) + spec["spec"].get("initContainers", []):
            image = container.get("image")
            if image in self.image_stand_ins:
                container["image"] = self.image_stand_ins[image]
            container.pop("ports", None)
        return spec

    def start_pod(self, spec: Mapping[str, Any], *, ip: str | None = None) -> RunningPod:
        """`podman kube play` the pod; raises PodFailed when the engine refuses to start it."""
        spec = self._adapted(spec)
        self._make_empty_dirs_writable(spec)
        name = spec["metadata"]["name"]
        main = spec["spec"]["containers"][0]["name"]
        if self.podman.exists("pod", name):
            self.podman("pod", "rm", "--force", name)
        path = self.workdir / f"pod-{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        args = ["kube", "play", "--quiet"]
        for configmap in self.configmap_files():
            args += ["--configmap", str(configmap)]
        args += ["--network", self.network]
        if ip:
            args += ["--ip", ip]
        started = time.monotonic()
        result = self.podman(*args, str(path), check=False, timeout=300)
        if result.returncode != 0:
            self._cleanup(name, failed=True)
            said = (result.stdout + result.stderr).decode(errors="replace")
            raise PodFailed(name, "the engine could not start it: " + engine_refusal(said), said)
        has_xcom = any(c["name"] == XCOM_SIDECAR for c in spec["spec"]["containers"])
        return RunningPod(name, f"{name}-{main}", started, has_xcom)

    def wait_pod(self, running: RunningPod, *, timeout_s: float) -> PodResult:
        """Wait for the pod's main container to exit; collect its log, exit code and XCom."""
        name = running.name
        try:
            self.podman("wait", running.main, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as expired:
            logs = self._logs(running.main)
            self._cleanup(name, failed=True)
            cause = f"did not finish within {timeout_s:.0f} s; last output: {last_cause(logs)}"
            raise PodFailed(name, cause, logs) from expired
        state = json.loads(self.podman.text("inspect", running.main, "--format", "{{json .State}}"))
        code, engine_error = int(state.get("ExitCode", -1)), (state.get("Error") or "").strip()
        logs = self._logs(running.main)
        xcom = None
        if code == 0 and running.has_xcom:
            raw = self.podman("exec", f"{name}-{XCOM_SIDECAR}", "cat", XCOM_FILE, check=False)
            if raw.returncode != 0:
                self._cleanup(name, failed=True)
                raise PodFailed(name, f"it succeeded but wrote no XCom result to {XCOM_FILE}", logs)
            xcom = json.loads(raw.stdout or b"null")
        result = PodResult(name, code, time.monotonic() - running.started, logs, xcom)
        self.results.append(result)
        self._cleanup(name, failed=code != 0)
        if code != 0:
            cause = engine_error or last_cause(logs)
            if code > 128 and not engine_error:  # the shell's way of saying "killed by a signal"
                cause = f"killed by signal {code - 128} ({signal.Signals(code - 128).name}); last output: {cause}"
            raise PodFailed(
                name, f"container {running.main.removeprefix(name + '-')} exited with code {code}: {cause}", logs
            )
        return result

    def run_pod(self, spec: Mapping[str, Any], *, timeout_s: float = 1800, ip: str | None = None) -> PodResult:
        return self.wait_pod(self.start_pod(spec, ip=ip), timeout_s=timeout_s)

    def terminate_pod(self, name: str, *, grace_s: float = 30) -> None:
        """Stopped as Kubernetes stops a pod: SIGTERM, then SIGKILL after the grace period."""
        self.podman("pod", "stop", "--time", str(int(grace_s)), name, check=False, timeout=grace_s + 60)

    def kill_pod(self, name: str) -> None:
        """Gone at once, as a node that loses power (SIGKILL to every container)."""
        self.podman("pod", "kill", "--signal", "KILL", name, check=False)

    def _logs(self, container: str) -> str:
        result = self.podman("logs", container, check=False)
        return (result.stdout + result.stderr).decode(errors="replace")

    def _cleanup(self, name: str, *, failed: bool) -> None:
        if failed and self.keep_failed:
            log.warning("pod %s kept for inspection (podman pod rm -f %s)", name, name)
            return
        self.podman("pod", "rm", "--force", name, check=False)


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])
