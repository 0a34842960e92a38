"""dvc.yaml as the one definition of the pipeline, read into ordered stage specs.

`dvc repro` and the Airflow DAGs run the very same commands: a DAG task runs its stage's
`cmd` exactly as dvc.yaml writes it, with `--shards NNNNN ...` appended for the stages
fanned out over shard groups. Nothing here imports Airflow or the components, so DAG files
parse fast and this module is testable on its own.

Why this module is long: reading dvc.yaml as DVC does (path and params forms, foreach
expansion, the out -> dep order) and the project and shard groups built on it are one unit
that every DAG task and control step reads; split, each part would import the others.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from fgclip.config import Params, load_params
from fgclip.core.storage import list_files
from fgclip.orchestration.config import OrchestrationConfig
from fgclip.orchestration.gitrepo import committed_params, committed_text

DVC_FILE = "dvc.yaml"
PARAMS_FILE = "params.yaml"
SHARD_SUFFIX = ".tar"
#: The component commands the tasks run; the executable is resolved on PATH at run time.
COMPONENT_PROGRAM = "fgclip"
#: Everything a dvc.yaml stage may hold that this reader understands; anything else
#: (foreach, matrix, wdir, templating...) would change what the command means.
KNOWN_STAGE_KEYS = {"cmd", "deps", "params", "outs", "metrics", "plots", "desc", "meta", "frozen", "always_changed"}
_TEMPLATE = re.compile(r"\$\{")
#: The only interpolation the DAGs resolve: a foreach stage's ${item}, ${item.field}, ${key}.
_FOREACH_REF = re.compile(r"\$\{\s*(item|key)((?:\.[A-Za-z0-9_-]+)*)\s*\}")
#: A fanned-out stage's report flag: each shard group writes its own report there (see
#: `group_report`), and the groups' reports are merged into the stage's (reports.py).
REPORT_FLAG = "--report"
GROUP_REPORTS = ".fgclip/groups"
#: DVC names foreach stages NAME@ITEM; Airflow task ids take no '@'.
FOREACH_SEPARATOR = "@"
TASK_ID_SEPARATOR = "_"


class PipelineError(ValueError):
    """dvc.yaml (or the orchestration config) cannot be turned into DAG stages."""


@dataclass(frozen=True)
class StageSpec:
    """One dvc.yaml stage: its command and what DVC tracks about it."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots: every path the stage writes
    cached_outs: tuple[str, ...]  # the outs DVC stores in its cache (and pushes to the remote)
    params: tuple[str, ...]  # params.yaml keys or whole sections the stage reads
    fan_out: bool = False

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.cmd)

    @property
    def task_id(self) -> str:
        """The Airflow task id: the DVC name, a foreach stage's `eval@stage1` as `eval_stage1`."""
        return self.name.replace(FOREACH_SEPARATOR, TASK_ID_SEPARATOR)

    @property
    def base_name(self) -> str:
        """The stage as dvc.yaml names it (`eval` for `eval@stage1`): its node-pool key."""
        return self.name.split(FOREACH_SEPARATOR, 1)[0]

    @property
    def component(self) -> str:
        """The `fgclip` subcommand the stage runs (e.g. 'recaption'), or the program name."""
        argv = self.argv
        return argv[1] if argv[0] == COMPONENT_PROGRAM and len(argv) > 1 else argv[0]

    def command(self, shards: Sequence[str] | None = None) -> list[str]:
        """The argv a task runs: dvc.yaml's cmd, plus the shard group of a fanned-out stage,
        whose counts report goes to the group's own file (merged into the stage's afterwards:
        groups running at once never overwrite each other's counts)."""
        if shards is not None and not self.fan_out:
            raise PipelineError(f"stage {self.name} is not fanned out; it runs over every shard")
        if self.fan_out and not shards:
            raise PipelineError(f"stage {self.name} is fanned out; give it a non-empty shard group")
        if not shards:
            return self.argv
        argv = self.argv
        report = self.option(REPORT_FLAG)
        if report is not None:
            at = argv.index(REPORT_FLAG) if REPORT_FLAG in argv else argv.index(f"{REPORT_FLAG}={report}")
            argv = [
                *argv[:at],
                REPORT_FLAG,
                group_report(self.name, shards),
                *argv[at + (2 if argv[at] == REPORT_FLAG else 1) :],
            ]
        return [*argv, "--shards", *shards]

    def option(self, flag: str) -> str | None:
        """The value of `--flag VALUE` in the command, if it is there."""
        argv = self.argv
        for index, word in enumerate(argv):
            if word == flag and index + 1 < len(argv):
                return argv[index + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
        return None

    @property
    def git_outs(self) -> tuple[str, ...]:
        """The outs DVC leaves to git (`cache: false`: reports, metrics, plots)."""
        return tuple(out for out in self.outs if out not in self.cached_outs)

    def reads_param(self, key: str) -> bool:
        """Whether the stage tracks `key` (a dotted params.yaml key) itself or a section above it."""
        return any(key == tracked or key.startswith(tracked + ".") for tracked in self.params)


@dataclass(frozen=True)
class Pipeline:
    """The stages of dvc.yaml in run order (dependencies first, then file order)."""

    stages: tuple[StageSpec, ...]
    upstream: Mapping[str, frozenset[str]] = field(repr=False)  # stage -> stages whose outs it reads

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise PipelineError(f"dvc.yaml has no stage {name!r}; it has {self.names}")

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.upstream[self.stage(name).name])
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.upstream[current])
        return seen

    def split(self, last: str) -> tuple[list[StageSpec], list[StageSpec]]:
        """(`last` and every stage it needs, the stages that come after), both in run order.

        The data build DAG runs the first list, the train DAG the second."""
        head = self.ancestors(last) | {last}
        return ([s for s in self.stages if s.name in head], [s for s in self.stages if s.name not in head])


def _paths(entries: Iterable[Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """dvc.yaml path lists hold plain paths or one-key mappings {path: {options}}."""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in entries or []:
        if isinstance(entry, str):
            out.append((entry, {}))
        elif isinstance(entry, Mapping) and len(entry) == 1:
            ((path, options),) = entry.items()
            out.append((str(path), dict(options or {})))
        else:
            raise PipelineError(f"cannot read the dvc.yaml path entry {entry!r}")
    return out


def _params(name: str, entries: Iterable[Any] | None) -> tuple[str, ...]:
    keys: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, Mapping):
            for file, file_keys in entry.items():
                if file != PARAMS_FILE:
                    raise PipelineError(f"stage {name}: params from {file!r}; the DAGs read only {PARAMS_FILE}")
                keys.extend(file_keys or [])
        else:
            raise PipelineError(f"stage {name}: cannot read the params entry {entry!r}")
    return tuple(keys)


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (both relative to the project)."""
    inner, outer = PurePosixPath(os.path.normpath(path)), PurePosixPath(os.path.normpath(folder))
    return inner == outer or outer in inner.parents


def _read_stage(name: str, body: Any, fan_out: Sequence[str]) -> StageSpec:
    if not isinstance(body, Mapping):
        raise PipelineError(f"stage {name}: expected a mapping, got {body!r}")
    unknown = set(body) - KNOWN_STAGE_KEYS
    if unknown:
        raise PipelineError(
            f"stage {name}: dvc.yaml keys {sorted(unknown)} are not supported by the DAGs "
            f"(supported: {sorted(KNOWN_STAGE_KEYS)})"
        )
    cmd = body.get("cmd")
    if not isinstance(cmd, str) or not cmd.strip():
        raise PipelineError(f"stage {name}: cmd must be one command (a string); the DAGs run it as one task")
    if _TEMPLATE.search(cmd):
        raise PipelineError(f"stage {name}: templated commands (${{...}}) are not supported by the DAGs")
    outs = _paths(body.get("outs"))
    every_out = outs + _paths(body.get("metrics")) + _paths(body.get("plots"))
    cached = tuple(path for path, options in outs if options.get("cache", True))
    return StageSpec(
        name=name,
        cmd=" ".join(cmd.split()),
        deps=tuple(path for path, _ in _paths(body.get("deps"))),
        outs=tuple(path for path, _ in every_out),
        cached_outs=cached,
        params=_params(name, body.get("params")),
        fan_out=name in fan_out,
    )


def _substitute(value: Any, key: Any, item: Any, where: str) -> Any:
    """A foreach body with ${item}, ${item.field} and ${key} filled in (keys of path
    mappings too); any other ${...} is refused: the DAGs do not resolve DVC vars."""
    if isinstance(value, str):

        def fill(match: re.Match[str]) -> str:
            node = key if match.group(1) == "key" else item
            for part in filter(None, match.group(2).split(".")):
                if not isinstance(node, Mapping) or part not in node:
                    raise PipelineError(f"{where}: {match.group(0)} names nothing in {node!r}")
                node = node[part]
            return str(node)

        filled = _FOREACH_REF.sub(fill, value)
        if _TEMPLATE.search(filled):
            raise PipelineError(f"{where}: {value!r} uses DVC vars; the DAGs resolve only ${{item}} and ${{key}}")
        return filled
    if isinstance(value, Mapping):
        return {_substitute(k, key, item, where): _substitute(v, key, item, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, key, item, where) for v in value]
    return value


def _expand(name: str, body: Any) -> list[tuple[str, Any]]:
    """(name, body) of each stage a dvc.yaml entry makes: one, or one per foreach item,
    named as DVC names them (NAME@ITEM, NAME@KEY, or NAME@INDEX for items that are mappings)."""
    if not (isinstance(body, Mapping) and "foreach" in body):
        return [(name, body)]
    extra = set(body) - {"foreach", "do"}
    items = body.get("foreach")
    if extra or "do" not in body or isinstance(items, str):
        raise PipelineError(
            f"stage {name}: only a literal `foreach` list or mapping with a `do` body is supported "
            "by the DAGs (no vars, no extra keys)"
        )
    pairs = list(items.items()) if isinstance(items, Mapping) else list(enumerate(items or ()))
    stages = []
    for key, item in pairs:
        suffix = key if isinstance(items, Mapping) or isinstance(item, (Mapping, list)) else item
        full = f"{name}{FOREACH_SEPARATOR}{suffix}"
        stages.append((full, _substitute(body["do"], key, item, f"stage {full}")))
    return stages


def _order(stages: list[StageSpec]) -> tuple[list[StageSpec], dict[str, frozenset[str]]]:
    """Topological order over out -> dep edges, keeping file order among ready stages."""
    upstream = {
        stage.name: frozenset(
            other.name
            for other in stages
            if other is not stage
            and any(_inside(dep, out) or _inside(out, dep) for dep in stage.deps for out in other.outs)
        )
        for stage in stages
    }
    ordered: list[StageSpec] = []
    done: set[str] = set()
    while len(ordered) < len(stages):
        ready = [s for s in stages if s.name not in done and upstream[s.name] <= done]
        if not ready:
            raise PipelineError(f"dvc.yaml stages form a cycle among {sorted(set(upstream) - done)}")
        ordered.append(ready[0])
        done.add(ready[0].name)
    return ordered, upstream


def load_pipeline(root: str | Path, fan_out: Sequence[str] = (), *, committed: bool = False) -> Pipeline:
    """The stages of `root`/dvc.yaml in run order; `fan_out` names the per-shard-group ones.
    `committed`: dvc.yaml as the checkout's HEAD has it (what a new run works with)."""
    path = Path(root) / DVC_FILE
    text = committed_text(root, DVC_FILE) if committed else None
    if text is None:
        if not path.is_file():
            raise PipelineError(f"no {DVC_FILE} in {root}")
        text = path.read_text()
    document = yaml.safe_load(text) or {}
    if set(document) - {"stages"}:
        raise PipelineError(
            f"{path}: top-level keys {sorted(set(document) - {'stages'})} are not supported by the DAGs"
        )
    raw = document.get("stages") or {}
    missing = sorted(set(fan_out) - set(raw))
    if missing:
        raise PipelineError(f"orchestration.fan_out names stages that {path} does not have: {missing}")
    expanded = [pair for name, body in raw.items() for pair in _expand(name, body)]
    ordered, upstream = _order([_read_stage(name, body, fan_out) for name, body in expanded])
    task_ids = [stage.task_id for stage in ordered]
    clashes = sorted({task_id for task_id in task_ids if task_ids.count(task_id) > 1})
    if clashes:
        raise PipelineError(f"{path}: stages share the Airflow task ids {clashes}")
    return Pipeline(tuple(ordered), upstream)


# ------------------------------------------------------------------------ the project


@dataclass(frozen=True)
class Project:
    """A DVC project the DAGs run in: its folder, typed params and pipeline. `home` is the
    checkout it belongs to (a run workspace's project; the folder itself for a checkout): the
    shared DVC cache, the DVC remote folder and the local MLflow store live there."""

    root: Path
    params: Params
    pipeline: Pipeline
    home: Path | None = None

    @property
    def home_root(self) -> Path:
        return self.home or self.root

    @property
    def settings(self) -> OrchestrationConfig:
        return self.params.orchestration

    def data_stages(self) -> list[StageSpec]:
        return self.pipeline.split(self.settings.data_last_stage)[0]

    def train_stages(self) -> list[StageSpec]:
        return self.pipeline.split(self.settings.data_last_stage)[1]


def project_root(dags_folder: str | Path | None = None) -> Path:
    """The workspace: $FGCLIP_WORKSPACE, else orchestration.workspace of the project that
    holds the DAG files (the folder above dags/), else that project itself."""
    if os.environ.get("FGCLIP_WORKSPACE"):
        return Path(os.environ["FGCLIP_WORKSPACE"]).resolve()
    home = Path(dags_folder).resolve().parent if dags_folder else Path.cwd()
    configured = committed_params(home).orchestration.workspace
    return (home / configured).resolve() if configured else home


def load_project(root: str | Path, *, committed: bool = False, home: str | Path | None = None) -> Project:
    """The project in `root`; `committed`: its params.yaml and dvc.yaml as HEAD has them (what
    the DAG files are built from, so a run never changes the DAG); `home`: the checkout a
    run workspace belongs to."""
    root = Path(root)
    params = committed_params(root) if committed else load_params(root / PARAMS_FILE)
    runtime = os.environ.get("FGCLIP_RUNTIME")
    if runtime:
        params = params.model_copy(
            update={"orchestration": params.orchestration.model_copy(update={"runtime": runtime})}
        )
        OrchestrationConfig.model_validate(params.orchestration.model_dump())  # a bad FGCLIP_RUNTIME fails here
    pipeline = load_pipeline(root, params.orchestration.fan_out, committed=committed)
    project = Project(root, params, pipeline, Path(home).resolve() if home else None)
    data = {stage.name for stage in project.data_stages()}
    outside = sorted(set(params.orchestration.fan_out) - data)
    if outside:
        raise PipelineError(
            f"orchestration.fan_out stages {outside} are not data stages (up to {params.orchestration.data_last_stage})"
        )
    return project


# ---------------------------------------------------------------------- shard groups


def list_shard_names(folder: str | Path) -> list[str]:
    """NNNNN of every NNNNN.tar directly in `folder` (local or s3://)."""
    return sorted(name[: -len(SHARD_SUFFIX)] for name in list_files(folder, SHARD_SUFFIX) if "/" not in name)


def shard_groups(
    shards: Sequence[str], group_size: int, first: int | None = None, last: int | None = None
) -> list[list[str]]:
    """Consecutive groups of `group_size` shards, of those numbered first..last (inclusive)."""
    if group_size < 1:
        raise PipelineError("the shard group size must be >= 1")
    if first is not None and last is not None and first > last:
        raise PipelineError(f"shard range {first}..{last} is empty: the first shard comes after the last")
    chosen = [name for name in shards if (first is None or int(name) >= first) and (last is None or int(name) <= last)]
    if not chosen:
        raise PipelineError(
            f"no shards in range {first if first is not None else 'start'}.."
            f"{last if last is not None else 'end'} among {len(shards)} shards "
            f"({shards[0] + '..' + shards[-1] if shards else 'none at all'})"
        )
    return [chosen[i : i + group_size] for i in range(0, len(chosen), group_size)]


def group_label(shards: Sequence[str]) -> str:
    """How a shard group is named in the UI: '00000-00003', or '00007' for one shard."""
    return shards[0] if len(shards) == 1 else f"{shards[0]}-{shards[-1]}"


def group_report(stage: str, shards: Sequence[str]) -> str:
    """Where one shard group of a fanned-out stage writes its counts (in the run workspace)."""
    return f"{GROUP_REPORTS}/{stage}/{group_label(shards)}.json"
