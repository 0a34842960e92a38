"""A TrainJob's state, read from Airflow's triggerer: its verdict and the trigger that polls
for it, so the operator that waits for a training of days holds no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from fgclip.orchestration.config import TrainerSettings

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINJOB_PLURAL = "trainjobs"
_TRAINER_DEFAULTS = TrainerSettings()


def trainjob_verdict(trainjob: Mapping[str, Any]) -> tuple[str, str] | None:
    """("Complete" | "Failed", "reason: message") once the TrainJob has finished, else None."""
    for condition in (trainjob.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            detail = ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
            return condition["type"], detail or "no message"
    return None


#: How the trigger reads a TrainJob: (name, namespace) -> the object (injected in tests).
Fetch = Callable[[str, str], Awaitable[Mapping[str, Any]]]


class TrainJobTrigger(BaseTrigger):
    """Polls a TrainJob from Airflow's triggerer until it completes or fails, then fires one
    event {"state", "detail", "name", "namespace"}: the worker slot is free meanwhile."""

    def __init__(
        self,
        name: str,
        namespace: str,
        kubernetes_conn_id: str = "kubernetes_default",
        poll_interval_s: float = _TRAINER_DEFAULTS.poll_interval_s,
        fetch: Fetch | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_interval_s = poll_interval_s
        self._fetch = fetch

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "name": self.name,
                "namespace": self.namespace,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "poll_interval_s": self.poll_interval_s,
            },
        )

    async def _get(self) -> Mapping[str, Any]:
        if self._fetch is not None:
            return await self._fetch(self.name, self.namespace)
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client as async_client

        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)
        async with hook.get_conn() as connection:
            api = async_client.CustomObjectsApi(connection)
            return await api.get_namespaced_custom_object(
                group=TRAINER_GROUP,
                version=TRAINER_VERSION,
                namespace=self.namespace,
                plural=TRAINJOB_PLURAL,
                name=self.name,
            )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                trainjob = await self._get()
            except Exception as error:  # the API server or the TrainJob is gone: the task decides
                yield TriggerEvent({"state": "Error", "detail": f"cannot read the TrainJob: {error}", **self._id()})
                return
            verdict = trainjob_verdict(trainjob)
            if verdict is not None:
                yield TriggerEvent({"state": verdict[0], "detail": verdict[1], **self._id()})
                return
            await asyncio.sleep(self.poll_interval_s)

    def _id(self) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace}
