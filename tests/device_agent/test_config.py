"""Settings come from the TOML file, then EDGETAILOR_AGENT_* variables, then flags (which win)."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.cli import build_parser
from device_agent.config import SETTINGS, resolve
from device_agent.fetch import DEFAULT_WINDOW
from shared.errors import ConfigError


def _settings(argv: list[str], env: dict[str, str] | None = None, config: Path | None = None):
    args = build_parser().parse_args(argv)
    return resolve(args, environ=env or {}, config=config or args.config)


def test_file_environment_and_flags_override_each_other_in_that_order(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'broker = "mqtt://file:1883"\nid = "pi-file"\ndata_dir = "from-file"\nthreads = 1\n'
        'keepalive = 11\ncpu_affinity = [2, 3]\n[tags]\nsite = "lab"\n'
    )
    env = {"EDGETAILOR_AGENT_THREADS": "2", "EDGETAILOR_AGENT_KEEPALIVE": "12"}
    settings = _settings(["--config", str(config), "--keepalive", "13"], env)
    assert settings["broker"] == "mqtt://file:1883" and settings.sources["broker"] == str(config)
    assert settings["threads"] == 2 and settings.sources["threads"] == "EDGETAILOR_AGENT_THREADS"
    assert settings["keepalive"] == 13 and settings.sources["keepalive"] == "--keepalive"
    assert settings["cpu_affinity"] == (2, 3) and settings["tags"] == {"site": "lab"}
    assert settings["data_dir"] == Path.cwd() / "from-file"  # made absolute
    assert (
        settings["xfer_window"] == DEFAULT_WINDOW and settings.sources["xfer_window"] == "default"
    )


def test_config_file_is_found_through_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'broker = "mqtt://h"\nid = "pi"\ndata_dir = "{tmp_path}"\n')
    settings = _settings([], {"EDGETAILOR_AGENT_CONFIG": str(config)})
    assert settings.config_file == config and settings["id"] == "pi"


def test_every_flag_has_a_file_key_and_a_variable() -> None:
    options = {a.dest for a in build_parser()._actions if a.option_strings}
    assert {s.key for s in SETTINGS} <= options
    assert all(s.env == "EDGETAILOR_AGENT_" + s.key.upper() for s in SETTINGS)


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ('brokr = "x"\n', {}, "unknown key(s) brokr"),
        ("threads = 0\n", {}, "threads in {config}: 0 must be > 0"),
        ("threads = [1]\n", {}, "threads in {config} has the wrong type (list)"),
        ("id = \n", {}, "is not valid TOML"),
        ("", {"EDGETAILOR_AGENT_KEEPALIVE": "soon"}, "EDGETAILOR_AGENT_KEEPALIVE='soon'"),
        ("", {"EDGETAILOR_AGENT_SERVE": "nowhere"}, "use unix:/path/to.sock or HOST:PORT"),
    ],
)
def test_bad_settings_name_where_they_came_from(
    tmp_path: Path, content: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('broker = "mqtt://h"\nid = "pi"\ndata_dir = "d"\n' + content)
    with pytest.raises(ConfigError, match="") as caught:
        _settings(["--config", str(config)], env)
    assert message.format(config=config) in str(caught.value)


def test_missing_required_settings_say_each_way_to_give_them() -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(["--id", "pi"])
    assert str(caught.value) == (
        "missing required setting(s): --broker (or broker in the config file, or "
        "EDGETAILOR_AGENT_BROKER); --data-dir (or data_dir in the config file, or "
        "EDGETAILOR_AGENT_DATA_DIR)"
    )
