"""Request and response bodies of the REST API (pydantic), apart from the ORM rows they come from.

Documents that belong to the wire contract (birth, telemetry, manifests, benchmark results) are
passed through as JSON objects as the devices sent them; their fields are described in
shared/messages.py, shared/manifest.py and shared/results.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DeviceId = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="letters, digits, _ . -")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- devices -------------------------------------------------------------------------------------
class ActiveModel(BaseModel):
    sha256: str
    label: str | None = None


class DeviceSummary(BaseModel):
    device_id: str
    online: bool
    arch: str | None = None
    cores: int | None = None
    ram_mb: float | None = None
    agent_version: str | None = None
    runtimes: list[str] = []
    tags: dict[str, str] = {}
    last_seen: float
    last_telemetry_at: float | None = None
    active_model: ActiveModel | None = None


class DesiredState(BaseModel):
    desired: dict[str, Any] | None = Field(
        None, description="the rollout target the device should run (deploy_id, sha256, state...)"
    )
    last_deploy: dict[str, Any] | None = None
    actual_sha256: str | None = None
    in_sync: bool
    reason: str = Field(description="why desired and actual differ (or that they agree), in words")


class HistoryItem(BaseModel):
    kind: Literal["deploy", "benchmark"]
    id: str
    at: float
    status: str
    sha256: str | None = None
    detail: str = ""


class DeviceDetail(DeviceSummary):
    capabilities: dict[str, Any] | None = Field(None, description="the device's birth message")
    telemetry: dict[str, Any] | None = None
    first_seen: float
    state: DesiredState
    history: list[HistoryItem]


# -- artifacts -----------------------------------------------------------------------------------
class ArtifactSummary(BaseModel):
    sha256: str
    name: str
    format: str
    precision: str
    size_bytes: int
    created: float
    downloadable: bool


# -- campaigns -----------------------------------------------------------------------------------
class CampaignCreate(Strict):
    model: str = Field(min_length=1, max_length=512, examples=["builtin:digits_cnn"])
    data: str = Field(min_length=1, max_length=512, examples=["builtin:digits"])
    space: str = Field("default", min_length=1, max_length=512)
    devices: list[str] = Field(["all"], min_length=1, max_length=256)
    constraints: list[str] = Field([], max_length=32, examples=[["accuracy_drop<=0.02"]])
    objective: str = Field("max_metric", max_length=64)
    formats: list[Literal["tflite", "onnx"]] = Field(["tflite"], min_length=1, max_length=2)
    pretrain_epochs: int = Field(0, ge=0, le=1000)
    runs: int = Field(50, ge=1, le=100_000)
    min_s: float = Field(1.0, ge=0, le=3600)
    threads: list[Annotated[int, Field(ge=1, le=256)]] = Field(
        [], max_length=16, description="thread counts to sweep; empty: the agent's default"
    )
    eval_samples: int | None = Field(
        1000, ge=1, le=1_000_000, description="the test split, at most this many (null: all of it)"
    )
    task: Literal["classification", "embedding", "regression"] | None = Field(
        None, description="null: the model factory's task, else a guess the campaign states"
    )
    metric: str | None = Field(
        None,
        max_length=512,
        description="a user metric pkg.mod:fn or file.py:fn, scored on the host",
    )
    strict: bool = Field(False, description="point comparisons instead of 95% intervals")
    job_timeout_s: float = Field(300.0, gt=0, le=86_400)
    retries: int = Field(1, ge=0, le=100)
    offline_deadline_s: float = Field(120.0, gt=0, le=7 * 86_400)
    screen_margin: float = Field(0.02, ge=0, le=1)
    campaign_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="name it; the same id with the same spec resumes a stored campaign",
    )  # fmt: skip


class CampaignSummary(BaseModel):
    campaign_id: str
    status: str = Field(description="created | compressing | measuring | done | failed | cancelled")
    job: str | None = Field(None, description="the service job: queued | running | done | ...")
    model: str | None = None
    data: str | None = None
    devices: list[str] = []
    jobs: dict[str, int] = Field({}, description="benchmark jobs by state")
    progress: dict[str, Any] = {}
    error: str | None = None
    created: float
    updated: float


class CampaignDetail(CampaignSummary):
    spec: dict[str, Any]
    candidates: list[dict[str, Any]]
    selection: dict[str, Any] | None = None


class CampaignResults(BaseModel):
    campaign_id: str
    results: list[dict[str, Any]]


class CampaignSelection(BaseModel):
    campaign_id: str
    selection: dict[str, Any]


# -- deployments ---------------------------------------------------------------------------------
class TargetSpec(Strict):
    device_id: str = DeviceId
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="an artifact this service stores")


class DeploymentCreate(Strict):
    campaign_id: str | None = Field(
        None, max_length=64, description="deploy each selected device's choice of this campaign"
    )
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="deploy this stored artifact to `devices`"
    )
    targets: list[TargetSpec] | None = Field(None, max_length=10_000)
    devices: list[str] | None = Field(None, max_length=10_000)
    eval_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="stored eval set for the health check"
    )
    waves: str = Field("1,25%,100%", max_length=256, examples=["1,25%,100%"])
    max_failures: int = Field(0, ge=0, le=10_000)
    latency_budget_ms: float | None = Field(None, gt=0)
    min_metric: float | None = None
    health_runs: int = Field(20, ge=1, le=10_000)
    timeout_s: float = Field(300.0, gt=0, le=86_400)
    threads: int | None = Field(None, ge=1, le=256)
    offline_grace_s: float = Field(30.0, ge=0, le=86_400)


class TargetStatus(BaseModel):
    deploy_id: str
    device_id: str
    wave: int
    label: str
    sha256: str
    state: str
    stage: str | None = None
    sequence: int | None = None
    sent_at: float | None = None
    finished_at: float | None = None
    active_sha256: str | None = None
    error_code: str | None = None
    detail: str = ""
    health: dict[str, Any] | None = None
    rollback: str | None = None


class DeploymentStatus(BaseModel):
    rollout_id: str
    status: str = Field(description="active | done | aborted | cancelled | rolled_back")
    open: bool = Field(description="something is still to send, answer or roll back")
    waves: list[list[str]]
    current_wave: int
    max_failures: int
    aborted_wave: int | None = None
    reason: str = ""
    label: str = ""
    counts: dict[str, int]
    devices: list[TargetStatus]
    created: float
    updated: float


# -- benchmarks ----------------------------------------------------------------------------------
class BenchmarkCreate(Strict):
    device_id: str = DeviceId
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="a .tflite/.onnx this service stores"
    )
    eval_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="stored eval .npz (x, and y or ref)"
    )
    threads: int | None = Field(None, ge=1, le=256)
    runs: int = Field(50, ge=1, le=100_000)
    timeout_s: float = Field(300.0, gt=0, le=86_400)
    task: Literal["classification", "embedding", "regression"] | None = None
    device_timeout_s: float = Field(
        5.0, ge=0, le=60, description="how long to wait for an offline device before 503"
    )


class JobStatus(BaseModel):
    job_id: str
    device_id: str
    kind: str
    status: str = Field(description="submitted | <progress stage> | ok | error")
    finished: bool
    model_sha256: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    submitted: float
    updated: float
    result: dict[str, Any] | None = Field(None, description="the BenchmarkResult, once ok")


class DeviceRollback(Strict):
    deploy_id: str | None = Field(None, max_length=64, description="only if this one is active")
    reason: str = Field("", max_length=4000)
    timeout_s: float = Field(60.0, gt=0, le=3600)


class RollbackOutcome(BaseModel):
    device_id: str
    outcome: str
    active_sha256: str | None = None
    previous_sha256: str | None = None
    error_code: str | None = None
    detail: str = ""


class FleetStatusRow(BaseModel):
    device_id: str
    online: bool
    tags: dict[str, str] = {}
    last_seen: float | None = None
    active_model: ActiveModel | None = None
    state: DesiredState
    last_results: list[dict[str, Any]] = []


class ServiceInfo(BaseModel):
    name: str = "edgetailor"
    version: str
    fleet_connected: bool
    broker: str | None = None
    database: str
