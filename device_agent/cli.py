"""``edgetailor-agent``: run the device agent on a board.

Example::

    edgetailor-agent --broker mqtt://host:1883 --id pi-01 --data-dir /var/lib/edgetailor \\
        --tag site=lab --trust-key host.pub
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from device_agent import AGENT_VERSION
from device_agent.fetch import DEFAULT_WINDOW
from shared.broker_url import TlsOptions, parse_broker_url
from shared.errors import ConfigError, EdgeTailorError
from shared.topics import DEFAULT_BASE, Topics, check_device_id

logger = logging.getLogger(__name__)


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or len(key) > 128 or len(value) > 128:
        raise argparse.ArgumentTypeError(
            f"tag {text!r} must look like KEY=VALUE (each at most 128 chars)"
        )
    return key, value


def _cpu_list(text: str) -> tuple[int, ...]:
    try:
        cpus = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cpu-affinity {text!r}: give CPU numbers like 0,1"
        ) from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"--cpu-affinity {text!r}: give CPU numbers like 0,1")
    return cpus


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetailor-agent",
        description="edgetailor device agent: benchmark models sent over MQTT.",
    )
    parser.add_argument(
        "--broker", required=True, help="mqtt://[user:pass@]host[:port] or mqtts://..."
    )
    parser.add_argument(
        "--id", required=True, dest="device_id", help="device id (letters, digits, _ . -)"
    )
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="store, outbox and journal live here"
    )
    parser.add_argument(
        "--threads",
        type=_positive(int),
        default=None,
        help="runtime threads when a job does not say",
    )
    parser.add_argument("--base-topic", default=DEFAULT_BASE, help="MQTT base topic of the fleet")
    parser.add_argument(
        "--keepalive", type=_positive(int), default=30, help="MQTT keepalive in seconds"
    )
    parser.add_argument(
        "--telemetry-interval",
        type=_positive(float),
        default=10.0,
        help="seconds between telemetry",
    )
    parser.add_argument(
        "--trust-key",
        type=Path,
        default=None,
        help="host's Ed25519 public key (PEM); manifests must be signed by it",
    )
    parser.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of the broker")
    parser.add_argument(
        "--tls-cert", default=None, help="this device's certificate (PEM), for mTLS"
    )
    parser.add_argument("--tls-key", default=None, help="this device's private key (PEM)")
    parser.add_argument(
        "--tag",
        action="append",
        type=_tag,
        default=[],
        metavar="KEY=VALUE",
        help="announced in the birth message (repeatable), e.g. site=lab",
    )
    parser.add_argument(
        "--cpu-affinity",
        type=_cpu_list,
        default=None,
        help="CPUs for the benchmark worker, e.g. 2,3",
    )
    parser.add_argument(
        "--worker-memory-mb",
        type=_positive(int),
        default=None,
        help="RLIMIT_AS of the benchmark worker",
    )
    parser.add_argument(
        "--xfer-window",
        type=_positive(int),
        default=DEFAULT_WINDOW,
        help="most chunks asked for and not yet received; halves when chunks go missing",
    )
    parser.add_argument(
        "--xfer-retry-s",
        type=_positive(float),
        default=3.0,
        help="ask again for missing chunks after this long with none arriving (more if slow)",
    )
    parser.add_argument(
        "--xfer-timeout-s",
        type=_positive(float),
        default=60.0,
        help="fail a transfer after this long without progress",
    )
    parser.add_argument(
        "--outbox-retry-s",
        type=_positive(float),
        default=15.0,
        help="re-publish unacknowledged results this often",
    )
    parser.add_argument(
        "--max-queued-jobs",
        type=_positive(int),
        default=32,
        help="jobs waiting or running at most; more are refused with code 'busy'",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug, info, warning or error",
    )
    parser.add_argument("--version", action="version", version=f"edgetailor-agent {AGENT_VERSION}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from device_agent.agent import Agent, AgentConfig

    try:
        Topics(args.base_topic)
        config = AgentConfig(
            broker=parse_broker_url(args.broker),
            device_id=check_device_id(args.device_id),
            data_dir=args.data_dir,
            base_topic=args.base_topic,
            keepalive=args.keepalive,
            telemetry_interval=args.telemetry_interval,
            threads=args.threads,
            trust_key=args.trust_key,
            tls=TlsOptions(args.tls_ca, args.tls_cert, args.tls_key).check(),
            tags=dict(args.tag),
            cpu_affinity=args.cpu_affinity,
            xfer_window=args.xfer_window,
            xfer_retry_s=args.xfer_retry_s,
            xfer_timeout_s=args.xfer_timeout_s,
            outbox_retry_s=args.outbox_retry_s,
            max_queued_jobs=args.max_queued_jobs,
            worker_memory_mb=args.worker_memory_mb,
        )
        if args.trust_key is not None and not args.trust_key.is_file():
            raise ConfigError(
                f"--trust-key {args.trust_key} does not exist; copy the host's public key there"
            )
        agent = Agent(config)
    except EdgeTailorError as exc:
        print(f"edgetailor-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a --data-dir this user may not create or write
        print(
            f"edgetailor-agent: cannot prepare --data-dir {args.data_dir}: {exc}; give a "
            "directory the agent's user can write",
            file=sys.stderr,
        )
        return 2
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
