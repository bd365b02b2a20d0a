"""etc/: the reference server.yaml stays in sync with the settings and loads; the systemd unit
and the nginx site agree with the server's shutdown and streaming behaviour."""

from __future__ import annotations

import configparser
import itertools
import re
import subprocess
import sys
from pathlib import Path

import yaml

from flwd_server.config import declarations, known_keys, load_settings
from flwd_server.web.serving import graceful_timeout

REPO = Path(__file__).resolve().parents[2]
ETC = REPO / "etc"


def test_the_reference_server_yaml_is_what_the_generator_writes():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-server-yaml"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def flatten(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in tree.items():
        if isinstance(value, dict):
            keys |= flatten(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_the_reference_server_yaml_loads_and_names_every_setting():
    settings = load_settings(ETC / "server.yaml", environ={})
    assert not settings.dev and settings.auth.jwk_file and settings.auth.issuer and settings.auth.audience
    assert flatten(yaml.safe_load((ETC / "server.yaml").read_text())) == set(known_keys())
    text = (ETC / "server.yaml").read_text()
    for key in known_keys():
        name = key.rsplit(".", 1)[-1]
        block = text.split(f"\n{'  ' if '.' in key else ''}{name}:", 1)[0]
        assert block.rstrip().splitlines()[-1].lstrip().startswith("#"), f"{key} has no explanation above it"


def test_the_reference_server_yaml_states_the_bounds_start_up_checks():
    text = (ETC / "server.yaml").read_text()
    assert "# gunicorn worker processes.\n# Allowed: 1 to 64.\nworkers: 2\n" in text
    bounded = [d for d in declarations() if d.minimum is not None or d.maximum is not None]
    assert {d.key for d in bounded} >= {"workers", "threads", "limits.max_concurrent_runs"}
    for declared in bounded:
        name = declared.key.rsplit(".", 1)[-1]
        block = text.split(f"\n{'  ' if '.' in declared.key else ''}{name}:", 1)[0].splitlines()
        comments = itertools.takewhile(lambda line: line.lstrip().startswith("#"), reversed(block))
        allowed = next((line for line in comments if "# Allowed:" in line), "")
        for bound in (declared.minimum, declared.maximum):
            assert bound is None or f" {bound}" in allowed, f"{declared.key}: {bound} not stated above it"


def test_systemd_stops_with_sigterm_to_the_master_and_waits_longer_than_the_grace():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ETC / "systemd" / "flwd.service")
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed", "control-group would SIGTERM every job process at once"
    grace = load_settings(ETC / "server.yaml", environ={}).shutdown_grace
    assert int(service["TimeoutStopSec"]) > graceful_timeout(grace) + 5
    assert service["ExecStart"].split()[1:3] == [":serve", "--config"]


def test_the_nginx_site_streams_events_unbuffered_and_logs_no_query_string():
    site = (ETC / "nginx" / "flwd.conf").read_text()
    server = site.split("listen 443", 1)[1]
    assert "proxy_http_version 1.1;" in server and 'proxy_set_header Connection "";' in server
    sse = re.search(r"location ~ \^/\(events\|runs/\[\^/\]\+/events\)\$ \{(.*?)\}", site, re.S)
    assert sse, "no location for the event streams"
    for directive in ("proxy_buffering off;", "gzip off;", "proxy_read_timeout 1h;"):
        assert directive in sse.group(1)
    assert "client_max_body_size 1m;" in server
    assert load_settings(None, {}, environ={}).limits.max_body_bytes == 1024 * 1024
    log_format = site.split("log_format", 1)[1].split(";", 1)[0]
    assert (
        "$uri" in log_format
        and "$request " not in log_format
        and "$args" not in log_format
        and "$request_uri" not in log_format
    )
    assert "$http_authorization" not in site


def test_the_root_nginx_site_passes_the_forwarded_headers_and_drops_a_clients_prefix():
    server = (ETC / "nginx" / "flwd.conf").read_text().split("listen 443", 1)[1]
    for header in ("X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme", "X-Forwarded-Host $host"):
        assert f"proxy_set_header {header};" in server
    assert 'proxy_set_header X-Forwarded-Prefix "";' in server  # at the root: no prefix, whatever a client sends


def test_the_subpath_nginx_site_tells_flwd_its_prefix_and_streams_unbuffered_under_it():
    site = (ETC / "nginx" / "flwd-subpath.conf").read_text()
    server = site.split("listen 443", 1)[1]
    assert "proxy_http_version 1.1;" in server and 'proxy_set_header Connection "";' in server
    assert "proxy_set_header X-Forwarded-Prefix /flwd;" in server
    assert "proxy_set_header X-Forwarded-Host $host;" in server
    sse = re.search(r"location ~ \^/flwd\(/events\|/runs/\[\^/\]\+/events\)\$ \{(.*?)\}", site, re.S)
    assert sse, "no location for the event streams under /flwd"
    for directive in ("proxy_buffering off;", "gzip off;", "proxy_read_timeout 1h;", "rewrite ^/flwd(/.*)$ $1 break;"):
        assert directive in sse.group(1)
    assert re.search(r"location /flwd/ \{\s*proxy_pass http://flwd/;", site)
    assert "client_max_body_size 1m;" in server
    log_format = site.split("log_format", 1)[1].split(";", 1)[0]
    assert "$uri" in log_format and "$request " not in log_format and "$args" not in log_format
    assert "$http_authorization" not in site
    # flwd believes X-Forwarded-Prefix only from a trusted proxy: the reference server.yaml trusts nginx.
    reference = yaml.safe_load((ETC / "server.yaml").read_text())
    assert reference["http"]["trusted_proxies"] == 1
