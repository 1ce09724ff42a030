"""The agent's settings: command-line flags, environment variables and a TOML file, in one table.

Every setting has one key. It is read, lowest precedence first, from the built-in default, the TOML
file (``/etc/edgetailor/agent.toml`` when it exists, or ``--config FILE``), the environment variable
``EDGETAILOR_AGENT_<KEY>`` and the command-line flag. The same parser checks a value wherever it
comes from, and an error names where the bad value came from, so a typo in the file reads as clearly
as one on the command line. Unknown keys in the file are refused (a misspelt key would otherwise be
ignored without a word).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.fetch import DEFAULT_WINDOW
from shared.errors import ConfigError
from shared.topics import DEFAULT_BASE

DEFAULT_CONFIG = Path("/etc/edgetailor/agent.toml")
ENV_PREFIX = "EDGETAILOR_AGENT_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{text} must be > 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{text} must be > 0")
    return value


def _cpu_list(text: str) -> tuple[int, ...]:
    try:
        cpus = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"{text!r}: give CPU numbers like 0,1") from None
    if not cpus or min(cpus) < 0:
        raise ValueError(f"{text!r}: give CPU numbers like 0,1")
    return cpus


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or len(key) > 128 or len(value) > 128:
        raise ValueError(f"tag {text!r} must look like KEY=VALUE (each at most 128 chars)")
    return key, value


def _tags(text: str) -> dict[str, str]:
    return dict(_tag(part.strip()) for part in text.split(",") if part.strip())


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text!r}: use one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def _text(text: str) -> str:
    return text


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _serve(text: str) -> str:
    from device_agent.serve.address import parse_serve_address

    try:
        parse_serve_address(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


@dataclass(frozen=True)
class Setting:
    key: str  # TOML key; the flag is --key with dashes, the variable EDGETAILOR_AGENT_KEY
    parse: Callable[[str], Any]
    default: Any
    help: str
    flag: str = ""
    metavar: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("broker", _text, None, "mqtt://[user:pass@]host[:port] or mqtts://... (required)"),
    Setting("id", _text, None, "device id (letters, digits, _ . -) (required)"),
    Setting("data_dir", _path, None, "store, outbox and journal live here (required)"),
    Setting("threads", _positive_int, None, "runtime threads when a job does not say"),
    Setting("base_topic", _text, DEFAULT_BASE, "MQTT base topic of the fleet"),
    Setting("keepalive", _positive_int, 30, "MQTT keepalive in seconds"),
    Setting("telemetry_interval", _positive_float, 10.0, "seconds between telemetry"),
    Setting(
        "trust_key",
        _path,
        None,
        "host's Ed25519 public key (PEM) to pin; commands and manifests must be signed by it "
        "(without it, the first host key seen is pinned)",
    ),
    Setting("tls_ca", _path, None, "CA certificate (PEM) of the broker"),
    Setting("tls_cert", _path, None, "this device's certificate (PEM), for mTLS"),
    Setting("tls_key", _path, None, "this device's private key (PEM)"),
    Setting(
        "tags",
        _tags,
        {},
        "announced in the birth message (repeatable), e.g. site=lab",
        flag="--tag",
        metavar="KEY=VALUE",
    ),
    Setting(
        "cpu_affinity", _cpu_list, None, "CPUs for the benchmark and inference workers, e.g. 2,3"
    ),
    Setting(
        "worker_memory_mb", _positive_int, None, "RLIMIT_AS of the benchmark and inference workers"
    ),
    Setting(
        "max_store_mb",
        _positive_float,
        None,
        "disk budget of stored artifacts, partial downloads and releases, in MB",
    ),
    Setting(
        "xfer_window",
        _positive_int,
        DEFAULT_WINDOW,
        "most chunks asked for and not yet received; halves when chunks go missing",
    ),
    Setting(
        "xfer_retry_s",
        _positive_float,
        3.0,
        "ask again for missing chunks after this long with none arriving (more if slow)",
    ),
    Setting(
        "xfer_timeout_s", _positive_float, 60.0, "fail a transfer after this long without progress"
    ),
    Setting(
        "outbox_retry_s", _positive_float, 15.0, "re-publish unacknowledged results this often"
    ),
    Setting(
        "outbox_ttl_s",
        _positive_float,
        7 * 24 * 3600.0,
        "drop unacknowledged results older than this many seconds",
    ),
    Setting(
        "outbox_max_entries",
        _positive_int,
        2048,
        "unacknowledged results kept at most; the oldest are dropped",
    ),
    Setting(
        "outbox_max_mb",
        _positive_float,
        64.0,
        "disk the unacknowledged results may take at most, in MB; the oldest are dropped",
    ),
    Setting(
        "max_queued_jobs",
        _positive_int,
        32,
        "jobs waiting or running at most; more are refused with code 'busy'",
    ),
    Setting(
        "serve",
        _serve,
        None,
        "serve the active model to local applications: unix:PATH or 127.0.0.1:PORT",
        metavar="ADDRESS",
    ),
    Setting("log_level", _log_level, "info", "debug, info, warning or error"),
)
BY_KEY = {s.key: s for s in SETTINGS}
REQUIRED = ("broker", "id", "data_dir")


@dataclass(frozen=True)
class Settings:
    """The merged values and, for each, where it came from (shown by ``--check``)."""

    values: dict[str, Any]
    sources: dict[str, str]
    config_file: Path | None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; none has an argparse default, so a flag not given is absent."""
    for setting in SETTINGS:
        default = "" if setting.default in (None, {}) else f" (default: {setting.default})"
        kwargs: dict[str, Any] = {
            "dest": setting.key,
            "default": argparse.SUPPRESS,
            "help": setting.help + default,
            "metavar": setting.metavar,
        }
        if setting.key == "tags":
            kwargs.update(action="append", type=_argparse(_tag, setting))
        else:
            kwargs["type"] = _argparse(setting.parse, setting)
        if setting.key == "log_level":
            kwargs["choices"] = LOG_LEVELS
        parser.add_argument(setting.option, **kwargs)


def _argparse(parse: Callable[[str], Any], setting: Setting) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = setting.key  # argparse names the type in its error message
    return convert


def _from_file(path: Path, setting: Setting, value: Any) -> Any:
    where = f"{setting.key} in {path}"
    if setting.key == "tags":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f'{where} must be a table of strings, e.g. tags = {{site = "lab"}}')
        text = ",".join(f"{k}={v}" for k, v in value.items())
    elif setting.key == "cpu_affinity" and isinstance(value, list):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool | dict | list):
        raise ConfigError(f"{where} has the wrong type ({type(value).__name__})")
    else:
        text = str(value)
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# Parsed in a short-lived child process: importing tomllib costs the long-running agent 0.7 MB of
# resident memory for good (3% of its idle footprint), for a file it reads once.
_PARSE_TOML = """
import json, sys, tomllib
try:
    with open(sys.argv[1], "rb") as handle:
        data = tomllib.load(handle)
except tomllib.TOMLDecodeError as exc:
    print(f"not valid TOML: {exc}", file=sys.stderr)
    sys.exit(3)
print(json.dumps(data, default=str))
"""


def _parse_toml(path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _PARSE_TOML, str(path)], capture_output=True, text=True
    )
    if proc.returncode == 3:
        raise ConfigError(f"config file {path} is {proc.stderr.strip()}")
    if proc.returncode != 0:
        raise ConfigError(f"cannot read config file {path}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"cannot read config file {path}: permission denied")
    raw = _parse_toml(path)
    unknown = sorted(set(raw) - set(BY_KEY))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; known keys: "
            f"{', '.join(BY_KEY)}"
        )
    return {key: _from_file(path, BY_KEY[key], value) for key, value in raw.items()}


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None, config: Path | None = None
) -> Settings:
    """Merge defaults < file < environment < flags, check required keys, make data_dir absolute."""
    env = os.environ if environ is None else environ
    values = {s.key: s.default for s in SETTINGS}
    sources = {s.key: "default" for s in SETTINGS}
    if config is None and env.get(CONFIG_ENV):
        config = Path(env[CONFIG_ENV])
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is not None:
        for key, value in read_file(config).items():
            values[key], sources[key] = value, str(config)
    for setting in SETTINGS:
        text = env.get(setting.env)
        if text is None or text == "":
            continue
        try:
            values[setting.key] = setting.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{setting.env}={text!r}: {exc}") from None
        sources[setting.key] = setting.env
    given = vars(args)
    for setting in SETTINGS:
        if setting.key in given:
            value = given[setting.key]
            values[setting.key] = dict(value) if setting.key == "tags" else value
            sources[setting.key] = setting.option
    missing = [BY_KEY[key] for key in REQUIRED if values[key] in (None, "")]
    if missing:
        described = "; ".join(
            f"{s.option} (or {s.key} in the config file, or {s.env})" for s in missing
        )
        raise ConfigError(f"missing required setting(s): {described}")
    # A relative data dir would be resolved again by every subprocess that starts elsewhere.
    values["data_dir"] = Path(os.path.abspath(values["data_dir"]))
    return Settings(values, sources, config)
