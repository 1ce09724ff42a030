"""``edgetailor-agent``: run the device agent on a board.

Example::

    edgetailor-agent --broker mqtt://host:1883 --id pi-01 --data-dir /var/lib/edgetailor \\
        --tag site=lab --trust-key host.pub

Every setting can also come from ``/etc/edgetailor/agent.toml`` (or ``--config FILE``) and from
``EDGETAILOR_AGENT_<KEY>`` variables; see device_agent.config. ``--check`` reports what the
configuration amounts to without starting the agent.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent import AGENT_VERSION
from device_agent.config import CONFIG_ENV, DEFAULT_CONFIG, Settings, add_arguments, resolve
from shared.broker_url import TlsOptions, parse_broker_url
from shared.errors import ConfigError, EdgeTailorError
from shared.topics import Topics, check_device_id

if TYPE_CHECKING:
    from device_agent.agent import AgentConfig

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetailor-agent",
        description="edgetailor device agent: benchmark, deploy and serve models sent over MQTT.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML file with the settings (default: {DEFAULT_CONFIG} when it exists; "
        f"or ${CONFIG_ENV})",
    )
    add_arguments(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="check config, data dir, TLS files, broker and runtimes, then exit (1 on a problem)",
    )
    parser.add_argument("--version", action="version", version=f"edgetailor-agent {AGENT_VERSION}")
    return parser


def agent_config(settings: Settings) -> AgentConfig:
    from device_agent.agent import AgentConfig

    Topics(settings["base_topic"])
    trust_key = settings["trust_key"]
    if trust_key is not None and not trust_key.is_file():
        raise ConfigError(
            f"--trust-key {trust_key} does not exist; copy the host's public key there"
        )

    def text(key: str) -> str | None:
        return str(settings[key]) if settings[key] is not None else None

    return AgentConfig(
        broker=parse_broker_url(settings["broker"]),
        device_id=check_device_id(settings["id"]),
        data_dir=settings["data_dir"],
        base_topic=settings["base_topic"],
        keepalive=settings["keepalive"],
        telemetry_interval=settings["telemetry_interval"],
        threads=settings["threads"],
        trust_key=trust_key,
        tls=TlsOptions(text("tls_ca"), text("tls_cert"), text("tls_key")).check(),
        tags=dict(settings["tags"]),
        cpu_affinity=settings["cpu_affinity"],
        xfer_window=settings["xfer_window"],
        xfer_retry_s=settings["xfer_retry_s"],
        xfer_timeout_s=settings["xfer_timeout_s"],
        outbox_retry_s=settings["outbox_retry_s"],
        outbox_ttl_s=settings["outbox_ttl_s"],
        outbox_max_entries=settings["outbox_max_entries"],
        outbox_max_mb=settings["outbox_max_mb"],
        max_queued_jobs=settings["max_queued_jobs"],
        worker_memory_mb=settings["worker_memory_mb"],
        max_store_mb=settings["max_store_mb"],
        serve=settings["serve"],
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(args, config=args.config)
    except EdgeTailorError as exc:
        print(f"edgetailor-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings["log_level"].upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.check:
        from device_agent.check import run_check

        return run_check(settings)
    from device_agent.agent import Agent

    try:
        agent = Agent(agent_config(settings))
    except EdgeTailorError as exc:
        print(f"edgetailor-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a --data-dir this user may not create or write
        print(
            f"edgetailor-agent: cannot prepare --data-dir {settings['data_dir']}: {exc}; give a "
            "directory the agent's user can write",
            file=sys.stderr,
        )
        return 2
    logger.info(
        "agent %s %s starting: data dir %s, broker %s",
        settings["id"],
        AGENT_VERSION,
        settings["data_dir"],
        settings["broker"],
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
