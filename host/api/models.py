"""Request and response bodies of the REST API (pydantic), apart from the ORM rows they come from.

Documents that belong to the wire contract (birth, telemetry, manifests, benchmark results) are
passed through as JSON objects as the devices sent them; their fields are described in
shared/messages.py, shared/manifest.py and shared/results.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from host.campaign.spec import CAMPAIGN_ID_PATTERN, DEVICE_ID_PATTERN

DeviceId = Field(
    pattern=DEVICE_ID_PATTERN, description="1-64 letters, digits, _ . -, starting with one of the "
    "first two",
)  # fmt: skip
DeviceIdStr = Annotated[str, DeviceId]
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Counts of devices (1, 2, ...) or percentages of the fleet in (0, 100] (25%, 12.5%, 100%).
_WAVE = (
    r"(?:[1-9][0-9]{0,5}|(?:100(?:\.0{1,3})?|[1-9][0-9]?(?:\.[0-9]{1,3})?|0\.(?:[0-9]{0,2}[1-9]))%)"
)
WAVES_PATTERN = rf"^{_WAVE}(?:,{_WAVE}){{0,31}}$"


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
    sha256: str = Field(pattern=SHA256_PATTERN, description="a .tflite/.onnx this service stores")


class RolloutSettings(Strict):
    waves: str = Field(
        "1,25%,100%", pattern=WAVES_PATTERN, max_length=256, examples=["1,25%,100%"],
        description="devices per wave, comma-separated: a count (1) or a percentage (25%)",
    )  # fmt: skip
    max_failures: int = Field(0, ge=0, le=10_000)
    latency_budget_ms: float | None = Field(None, gt=0, le=3_600_000)
    min_metric: float | None = Field(None, ge=-1e12, le=1e12)
    health_runs: int = Field(20, ge=1, le=10_000)
    timeout_s: float = Field(300.0, gt=0, le=86_400)
    threads: int | None = Field(None, ge=1, le=256)
    offline_grace_s: float = Field(30.0, ge=0, le=86_400)


class DeployCampaign(RolloutSettings):
    """Each selected device's choice of a finished campaign."""

    campaign_id: str = Field(pattern=CAMPAIGN_ID_PATTERN)
    devices: list[DeviceIdStr] | None = Field(
        None, min_length=1, max_length=10_000, description="only these of the selected devices"
    )


class DeployArtifact(RolloutSettings):
    """One stored model to the named devices."""

    sha256: str = Field(pattern=SHA256_PATTERN, description="a stored .tflite or .onnx")
    devices: list[DeviceIdStr] = Field(min_length=1, max_length=10_000)
    eval_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="a stored eval .npz for the health check"
    )
    pending_ok: bool = Field(
        False, description="accept devices this service has never seen: each is pending until "
        "first seen (otherwise such a device is a 404)",
    )  # fmt: skip


class DeployTargets(RolloutSettings):
    """A stored model per device."""

    targets: list[TargetSpec] = Field(min_length=1, max_length=10_000)
    eval_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="a stored eval .npz for the health check"
    )
    pending_ok: bool = Field(False, description="as for a single artifact")


def _deploy_kind(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    given = [k for k in ("campaign_id", "sha256", "targets") if k in body]
    return given[0] if len(given) == 1 else None


DeploymentCreate = Annotated[
    Annotated[DeployCampaign, Tag("campaign_id")]
    | Annotated[DeployArtifact, Tag("sha256")]
    | Annotated[DeployTargets, Tag("targets")],
    Discriminator(
        _deploy_kind,
        custom_error_type="invalid_deployment",
        custom_error_message="give exactly one of campaign_id, sha256 (with devices) or targets",
    ),
]


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
    sha256: str = Field(pattern=SHA256_PATTERN, description="a .tflite/.onnx this service stores")
    eval_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="stored eval .npz (x, and y or ref)"
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


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ServiceInfo(BaseModel):
    name: str = "edgetailor"
    version: str
    fleet_connected: bool
    broker: str | None = None
    database: str
