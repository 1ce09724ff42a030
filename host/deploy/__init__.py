"""Deployment as desired state: what each board should run, and the driver that gets it there.

A deploy is a record, not a call that waits. :func:`create_rollout` stores a rollout: its devices
split into waves (``"1,25%,100%"``: one device, then a quarter of the fleet, then the rest), each
device's artifact and health-check bar. The :class:`DeploymentDriver` (run by ``edgetailor serve``,
or inline by the one-shot ``edgetailor deploy``) records each device's ``cmd.deploy``
(shared.messages.DeployCmd) when it is online, with a manifest addressed to it and the next number
of its deploy sequence, and the command pipeline (host.commands) publishes it, signed; the agent fetches and verifies the
artifact, health-checks it in its isolated worker, switches atomically and answers with a
:class:`shared.results.DeployResult`. When more than ``max_failures`` devices of a wave fail, the
rollout aborts: the wave's committed devices get ``cmd.rollback`` naming their deploy (a device
that has moved on is left alone) and later waves never start. A device that was offline gets its
deploy when it comes back; a restarted service carries on where the database says it was.

Modules: ``waves`` (the wave spec), ``targets`` (what goes where; from a campaign's selection),
``rollout`` (creating rollouts; the inline :class:`Deployer`), ``driver`` (the state machine),
``status`` (desired versus actual, in words). The tables are in host.store.deployments.
"""

from host.deploy.driver import TRANSFER_ALLOWANCE_S, DeploymentDriver, outcome_from_command
from host.deploy.rollout import (
    Deployer,
    DeviceOutcome,
    RolloutResult,
    create_rollout,
    deploy_selection,
    record_manual_rollback,
)
from host.deploy.status import desired_state
from host.deploy.targets import (
    DeployError,
    DeployTarget,
    targets_from_campaign,
    targets_from_selection,
)
from host.deploy.waves import DEFAULT_WAVES, parse_waves, plan_waves
from host.store.deployments import DeploymentStore

__all__ = [
    "DEFAULT_WAVES",
    "TRANSFER_ALLOWANCE_S",
    "DeployError",
    "DeployTarget",
    "Deployer",
    "DeploymentDriver",
    "DeploymentStore",
    "DeviceOutcome",
    "RolloutResult",
    "create_rollout",
    "deploy_selection",
    "desired_state",
    "outcome_from_command",
    "parse_waves",
    "plan_waves",
    "record_manual_rollback",
    "targets_from_campaign",
    "targets_from_selection",
]
