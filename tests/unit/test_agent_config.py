"""Agent configuration: defaults < TOML < environment < flags, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_config, write_config
from edge_agent.errors import ConfigError


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "from-file"\nhttp_port = 9000\nmax_batch_size = 4\n')
    env = {"EDGEFABRIC_AGENT_HTTP_PORT": "9100", "EDGEFABRIC_AGENT_MAX_BATCH_SIZE": "16"}
    config = load_config(path, env=env, overrides={"max_batch_size": 32, "profile": None})
    assert (config.device_id, config.http_port, config.max_batch_size) == ("from-file", 9100, 32)
    assert config.http_host == "127.0.0.1" and config.is_offline


@pytest.mark.parametrize(
    ("env", "key", "source"),
    [
        ({"EDGEFABRIC_AGENT_HTTP_PORT": "eighty"}, "http_port", "environment"),
        ({"EDGEFABRIC_AGENT_DEVICE_ID": "a.b"}, "device_id", "environment"),
        ({"EDGEFABRIC_AGENT_SHADOW_SAMPLE_FRACTION": "1.5"}, "shadow_sample_fraction", "environment"),
        ({"EDGEFABRIC_AGENT_BOGUS": "1"}, "bogus", "environment EDGEFABRIC_AGENT_BOGUS"),
    ],
)
def test_a_bad_value_names_its_key_and_where_it_came_from(env: dict[str, str], key: str, source: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert caught.value.key == key and caught.value.source == source


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('nats_ulr = "nats://127.0.0.1:4222"\n')
    with pytest.raises(ConfigError, match="nats_ulr"):
        load_config(path, env={})


def test_written_config_loads_back_the_same(tmp_path: Path) -> None:
    config = load_config(
        env={},
        overrides={"device_id": "dev-9", "nats_url": "nats://127.0.0.1:4222", "state_dir": str(tmp_path)},
    )
    write_config(config, tmp_path / "agent.toml")
    assert load_config(tmp_path / "agent.toml", env={}) == config
    assert (tmp_path / "agent.toml").stat().st_mode & 0o777 == 0o600
