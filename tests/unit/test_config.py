"""Settings: defaults, file, environment, flags; every error names its key."""

from __future__ import annotations

import pytest

from flwd_server.config import declarations, known_keys, load_settings, parse_bind
from flwd_server.errors import ConfigError

SEED_CONFIG = """\
bind: 0.0.0.0:8080
default_profile: secure
db_path: /var/lib/flwd/flwd.db

auth:
  issuer: "https://auth.example.org/"
  audience: "flwd"
  jwk_file: /etc/flwd/jwks.json

container:
  runtime: auto
  verify_signatures: permissive
  allowed_registries:
    - ghcr.io

limits:
  max_concurrent_runs: 32
  max_run_history: 10000
"""


def test_the_seed_example_config_loads_exactly(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(SEED_CONFIG)
    settings = load_settings(path, environ={})
    assert settings.bind == "0.0.0.0:8080"
    assert settings.auth.audience == "flwd"
    assert settings.container.allowed_registries == ("ghcr.io",)
    assert settings.container.verify_signatures == "permissive"
    assert settings.limits.max_concurrent_runs == 32
    assert str(settings.resolved_db_path) == "/var/lib/flwd/flwd.db"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("bnd: 1.2.3.4:80\n", "bnd", "unknown setting"),
        ("limits:\n  max_concurrent_runs: many\n", "limits.max_concurrent_runs", "expected an integer"),
        ("limits:\n  max_concurrent_runs: 0\n", "limits.max_concurrent_runs", "at least 1"),
        ("workers: 500\n", "workers", "must be at most 64, got 500"),
        ("threads: 10001\n", "threads", "must be at most 10000, got 10001"),
        ("limits:\n  max_concurent_runs: 2\n", "limits.max_concurent_runs", "unknown setting"),
        ("default_profile: relaxed\n", "default_profile", "expected one of secure, permissive, disabled"),
        ("dev: yes please\n", "dev", "expected true or false"),
        ("container:\n  allowed_registries: [1]\n", "container.allowed_registries[0]", "expected a string"),
        ("auth: 5\n", "auth", "expected a mapping"),
        ("bind: localhost\n", "bind", "HOST:PORT"),
        ("sources:\n  - {type: svn, name: x}\n", "sources[0].type", "expected one of local, git, oci"),
        ("sources:\n  - {type: local, name: x}\n", "sources[0].path", "is required"),
        ("sources:\n  - {type: local, name: x, path: /tmp, url: y}\n", "sources[0].url", "unknown key"),
        ("sources:\n  - {type: local, name: Bad Name, path: /tmp}\n", "sources[0].name", "lowercase"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_key(tmp_path, text, key, words):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == key
    assert words in caught.value.detail
    assert caught.value.detail.startswith(key)


def test_yaml_syntax_errors_give_the_line(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("bind: 127.0.0.1:1\nlimits: [\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_settings(path, environ={})


def test_precedence_is_defaults_then_file_then_environment_then_flags(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("limits:\n  max_concurrent_runs: 3\n  max_run_history: 50\nworkers: 3\n")
    environ = {"FLWD_LIMITS__MAX_CONCURRENT_RUNS": "5", "FLWD_WORKERS": "4", "FLWD_TOKEN": "not-a-setting"}
    settings = load_settings(path, {"workers": 6}, environ=environ)
    assert settings.limits.max_concurrent_runs == 5  # environment beats the file
    assert settings.limits.max_run_history == 50  # file beats the default
    assert settings.workers == 6  # flags beat everything
    assert settings.threads == 32  # default


def test_environment_values_are_validated_too():
    with pytest.raises(ConfigError, match="limits.max_concurrent_runs: expected an integer"):
        load_settings(None, environ={"FLWD_LIMITS__MAX_CONCURRENT_RUNS": "lots"})


def test_the_upper_bounds_hold_for_the_environment_too():
    with pytest.raises(ConfigError, match="^workers: must be at most 64, got 500$") as caught:
        load_settings(None, environ={"FLWD_WORKERS": "500"})
    assert caught.value.key == "workers"
    assert load_settings(None, environ={"FLWD_WORKERS": "64", "FLWD_THREADS": "10000"}).workers == 64


def test_duplicate_source_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="duplicate source names: a"):
        load_settings(
            None,
            {"sources": [{"type": "local", "name": "a", "path": "/x"}, {"type": "local", "name": "a", "path": "/y"}]},
            environ={},
        )


def test_every_setting_is_described():
    described = {declared.key for declared in declarations() if declared.help}
    assert described == set(known_keys())


@pytest.mark.parametrize(
    ("bind", "host", "port"), [("127.0.0.1:8080", "127.0.0.1", 8080), ("[::1]:9", "::1", 9), (":80", "0.0.0.0", 80)]
)
def test_bind_addresses_parse(bind, host, port):
    assert parse_bind(bind) == (host, port)


def test_dev_allowed_hosts_come_from_the_file_or_the_environment_lowercased(tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("dev_allowed_hosts: [DevBox.Internal, 'pinned.example:9', '[fd00::1]']\n")
    assert load_settings(config, environ={}).dev_allowed_hosts == ("devbox.internal", "pinned.example:9", "[fd00::1]")
    environ = {"FLWD_DEV_ALLOWED_HOSTS": "a.example,b.example:8080"}
    assert load_settings(None, environ=environ).dev_allowed_hosts == ("a.example", "b.example:8080")
    assert load_settings(None, environ={}).dev_allowed_hosts == ()


@pytest.mark.parametrize(
    "entry", ["http://devbox", "devbox/x", "dev box", "devbox:", "devbox:123456", "*.localhost", ""]
)
def test_a_dev_allowed_host_that_is_no_host_is_refused(entry):
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"dev_allowed_hosts": [entry]}, environ={})
    assert caught.value.key == "dev_allowed_hosts[0]"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("workers: 2\nthreads: 8\nworkers: 3\n", "workers", 3),
        (
            "limits:\n  max_concurrent_runs: 2\n  max_run_history: 5\n  max_concurrent_runs: 9\n",
            "limits.max_concurrent_runs",
            4,
        ),
        ("sources:\n  - type: local\n    name: a\n    path: /x\n    name: b\n", "sources[0].name", 5),
    ],
)
def test_a_key_repeated_in_the_file_is_refused_naming_it_and_its_line(tmp_path, text, key, line):
    """PyYAML keeps the last of two equal keys without a word: the first value would be silently lost."""
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == key
    assert caught.value.detail.startswith(key) and f"line {line}" in caught.value.detail
    assert "duplicate" in caught.value.detail


def test_merge_keys_may_still_override_what_they_merge(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("sse: &s {heartbeat: 5, max_duration: 60}\nlimits: {max_run_history: 7}\n")
    assert load_settings(path, environ={}).sse.heartbeat == 5
    path.write_text("x: &base {type: local, name: a, path: /x}\n")  # an anchor in an unknown key is still refused
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("container:\n  allowed_registries: registry.example.org\n", "container.allowed_registries"),
        ("container:\n  allowed_registries: a.example,b.example\n", "container.allowed_registries"),
        ("dev_allowed_hosts: devbox.internal\n", "dev_allowed_hosts"),
        ("auth:\n  algorithms: RS256\n", "auth.algorithms"),
    ],
)
def test_a_single_string_where_the_file_needs_a_list_is_refused(tmp_path, text, key):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == key and "expected a list" in caught.value.detail


def test_the_environment_keeps_its_comma_separated_lists():
    environ = {"FLWD_CONTAINER__ALLOWED_REGISTRIES": "a.example, b.example:5000", "FLWD_AUTH__ALGORITHMS": "[ES256]"}
    settings = load_settings(None, environ=environ)
    assert settings.container.allowed_registries == ("a.example", "b.example:5000")
    assert settings.auth.algorithms == ("ES256",)
    assert load_settings(
        None, environ={"FLWD_CONTAINER__ALLOWED_REGISTRIES": "one.example"}
    ).container.allowed_registries == ("one.example",)


def test_every_yaml_file_is_read_through_the_one_strict_loader():
    """yaml.safe_load keeps the last of two equal keys: no module but the loader may call PyYAML's loaders."""
    import ast

    from tests.unit.test_layout import ALL

    loaders = {"load", "safe_load", "full_load", "unsafe_load", "load_all", "safe_load_all"}
    calls = [
        f"{name}:{node.lineno}"
        for name, path in ALL.items()
        if name != "flwd_server.formats.yaml_loader"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in loaders and getattr(node.value, "id", None) == "yaml"
    ]
    assert calls == []
