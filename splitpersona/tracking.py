"""W&B for every job (data generation, training, evaluation): one settings model, one way to open a run.

A job's `wandb:` block is a `WandbConfig`; with `mode: disabled` (the default) nothing here imports wandb.
Runs that belong together share a project and a group: the training run's group (default: its output
directory's name) is recorded in run.json, and the evaluations of that run join it.
"""

from __future__ import annotations

import logging
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import Field

from splitpersona.config import StrictModel

log = logging.getLogger("spt.tracking")


class WandbMode(str, Enum):
    """Where a run logs; also the `--wandb` choice of the commands without a config (`spt eval report`,
    `spt data import`)."""

    online = "online"
    offline = "offline"
    disabled = "disabled"


class WandbConfig(StrictModel):
    mode: WandbMode = WandbMode.disabled
    project: str = Field("splitpersona", description="Evaluations log to the project of the run they evaluate.")
    entity: str | None = None
    name: str | None = Field(None, description="Run name; defaults to the output's name.")
    group: str | None = Field(
        None, description="Training: the group its evaluations join (default: the output directory's name); "
        "evaluation: default the training run's group."
    )
    init_timeout_s: float = Field(
        60.0, gt=0.0, description="online: how long to wait for the server before logging offline instead (compute "
        "nodes without internet); `wandb sync` uploads the run later."
    )

    @property
    def enabled(self) -> bool:
        return self.mode is not WandbMode.disabled


def start_run(cfg: WandbConfig, *, dir: Path, job_type: str, name: str, group: str | None = None,
              project: str | None = None, config: dict | None = None, run_id: str | None = None):
    """A W&B run logging under `dir`/wandb. Online, a server not reached within `init_timeout_s` gives a one-line
    warning and the same run offline: a compute node without internet must not lose a loaded model to its dashboard."""
    import wandb

    kwargs: dict[str, Any] = {
        "project": project or cfg.project, "entity": cfg.entity, "name": cfg.name or name, "group": group,
        "job_type": job_type, "dir": str(dir), "config": config,
    }
    if run_id is not None:
        kwargs.update(id=run_id, resume="allow")
    Path(dir).mkdir(parents=True, exist_ok=True)
    if cfg.mode is WandbMode.online:
        settings = wandb.Settings(console="off", save_code=False, init_timeout=cfg.init_timeout_s)
        try:
            return wandb.init(mode="online", settings=settings, **kwargs)
        except wandb.errors.Error as e:
            wandb.teardown()  # the failed init still holds the run id in W&B's service
            where = os.environ.get("WANDB_BASE_URL", settings.base_url)
            log.warning("W&B not reachable at %s within %gs (%s): logging offline to %s; upload it later with "
                        "`wandb sync`", where, cfg.init_timeout_s, str(e).splitlines()[0], Path(dir) / "wandb")
    return wandb.init(mode="offline", settings=wandb.Settings(console="off", save_code=False), **kwargs)


def run_ref(run) -> dict[str, Any]:
    """What run.json keeps of the training run's W&B run, so its evaluations can join its project and group."""
    return {"id": run.id, "project": run.project, "entity": run.entity or None, "group": run.group or None,
            "mode": "offline" if run.offline else "online"}


def artifact_name(kind: str, name: str) -> str:
    """A W&B artifact name from a file or directory name (W&B allows letters, digits, '-', '_' and '.')."""
    return f"{kind}-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or kind)


def _artifact(kind: str, path: Path, name: str | None, metadata: dict | None):
    import wandb

    art = wandb.Artifact(name or artifact_name(kind, path.name), type=kind, metadata=metadata)
    if path.is_dir():
        art.add_dir(str(path))
    else:
        art.add_file(str(path))
    return art


def _ref(art) -> dict[str, str]:
    return {"name": art.name.split(":")[0], "type": art.type, "digest": art.digest}


def log_files(run, kind: str, path: str | os.PathLike[str], *, name: str | None = None,
              metadata: dict | None = None) -> dict[str, str]:
    """Log a file or directory as an artifact this run made; returns its name, type and content digest."""
    art = _artifact(kind, Path(path), name, metadata)
    run.log_artifact(art)
    return _ref(art)


def use_files(run, kind: str, path: str | os.PathLike[str], *, name: str | None = None) -> dict[str, str]:
    """Declare a file or directory an input of this run. W&B keeps one version per name and content digest, so the
    input joins the artifact the job that made it logged under the same name (the lineage). Offline W&B cannot
    record an input (wandb refuses `use_artifact` offline): the run's config keeps the name and digest instead,
    under `inputs`, for the reader to match."""
    art = _artifact(kind, Path(path), name, None)
    if run.offline:
        log.info("W&B offline cannot record %s as an input; its name and digest are in the run's config", art.name)
    else:
        run.use_artifact(art)
    ref = _ref(art)
    inputs = dict(run.config.get("inputs") or {})
    inputs[ref["name"]] = ref
    run.config.update({"inputs": inputs}, allow_val_change=True)
    return ref
