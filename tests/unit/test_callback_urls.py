"""Which callback URLs pass ``callbacks.allowed_urls``: parsed URLs compared, never strings; and the signature."""

from __future__ import annotations

import pytest

from flwd_server.config import CallbackSettings
from flwd_server.errors import ConfigError, Unavailable, Unprocessable
from flwd_server.runs.callbacks import CallbackPolicy, signature

ALLOWED = ("https://hooks.example.org/ci", "http://127.0.0.1:8099/", "https://[::1]:9443/h/")

PASS = [
    "https://hooks.example.org/ci",
    "https://hooks.example.org/ci/",
    "https://hooks.example.org/ci/build/42",
    "https://hooks.example.org/ci?token=abc",
    "https://HOOKS.Example.org/ci",
    "HTTPS://hooks.example.org/ci",
    "https://hooks.example.org:443/ci",  # the default port made explicit is the same origin
    "https://hooks.example.org:0443/ci",  # and written with a leading zero: ports are compared as numbers
    "http://127.0.0.1:8099",
    "http://127.0.0.1:8099/anything/at/all",
    "https://[::1]:9443/h",
    "https://[::1]:9443/h/x",
]

REFUSE = [
    ("https://hooks.example.org.evil.net/ci", "not under"),  # a longer host is another host
    ("https://hooks.example.org@evil.net/ci", "userinfo"),  # evil.net is the host
    ("https://user:pw@hooks.example.org/ci", "userinfo"),
    ("https://hooks.example.org%40evil.net/ci", "host"),
    ("https://hooks.example.org\\@evil.net/ci", "backslash"),  # some parsers read \ as /
    ("https://hooks.example.org/cix", "not under"),  # a path prefix, not a segment prefix
    ("https://hooks.example.org/c", "not under"),
    ("https://hooks.example.org/", "not under"),
    ("https://hooks.example.org/ci/../admin", "dot segment"),
    ("https://hooks.example.org/ci/%2e%2e/admin", "dot segment"),
    ("https://hooks.example.org/ci%2f..%2fadmin", "encoded slash"),
    ("https://hooks.example.org:8443/ci", "not under"),  # another port
    ("http://hooks.example.org/ci", "not under"),  # another scheme
    ("http://127.0.0.1/", "not under"),  # port 80, not 8099
    ("http://127.0.0.1:80990/", "port"),
    ("http://localhost:8099/", "not under"),  # names are compared, not resolved
    ("http://127.1:8099/", "not under"),
    ("https://hooks.example.org/ci#frag", "fragment"),
    ("ftp://hooks.example.org/ci", "http"),
    ("javascript:alert(1)//hooks.example.org/ci", "http"),
    ("//hooks.example.org/ci", "http"),
    ("https:hooks.example.org/ci", "http"),
    ("https:///ci", "host"),
    ("https://hooks.example.org/ci/\x00", "control"),
    ("https://hooks.example.org/ci/\r\nX-Injected: 1", "control"),
    ("https://hooks.example.org /ci", "spaces"),
    ("https://hooks.exämple.org/ci", "non-ASCII"),
    ("https://hooks.example.org/ci/" + "a" * 2100, "longer than"),
    ("https://evil.net/https://hooks.example.org/ci", "not under"),
    ("https://evil.net/?https://hooks.example.org/ci", "not under"),
    ("", "http"),
    (42, "http"),
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> CallbackPolicy:
    secret = tmp_path_factory.mktemp("secret") / "callback.key"
    secret.write_text("s3cret\n")
    return CallbackPolicy(CallbackSettings(allowed_urls=ALLOWED, secret_file=str(secret)))


@pytest.mark.parametrize("url", PASS)
def test_urls_under_the_allow_list_pass(policy: CallbackPolicy, url: str) -> None:
    assert policy.check(url) == url


@pytest.mark.parametrize(("url", "why"), REFUSE)
def test_tricky_urls_are_refused_naming_why(policy: CallbackPolicy, url: object, why: str) -> None:
    with pytest.raises(Unprocessable) as caught:
        policy.check(url)
    assert caught.value.extra["errors"][0]["field"] == "callback.url"
    assert why in caught.value.detail


def test_no_allow_list_and_no_key_are_422s_naming_the_setting(tmp_path) -> None:
    with pytest.raises(Unprocessable, match=r"callbacks\.allowed_urls is empty"):
        CallbackPolicy(CallbackSettings()).check("https://hooks.example.org/ci")
    with pytest.raises(Unprocessable, match=r"callbacks\.secret_file is not set"):
        CallbackPolicy(CallbackSettings(allowed_urls=ALLOWED)).check("https://hooks.example.org/ci")
    unreadable = CallbackPolicy(CallbackSettings(allowed_urls=ALLOWED, secret_file=str(tmp_path / "missing")))
    with pytest.raises(Unavailable, match=r"callbacks\.secret_file cannot be read"):
        unreadable.check("https://hooks.example.org/ci")


@pytest.mark.parametrize(
    "entry",
    [
        "hooks.example.org/ci",
        "https://u@hooks.example.org/",
        "https://hooks.example.org/?t=1",
        "ftp://h/",
        "https://h/#x",
    ],
)
def test_a_bad_allow_list_entry_stops_start_up_naming_it(entry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CallbackPolicy(CallbackSettings(allowed_urls=("https://ok.example/", entry)))
    assert caught.value.key == "callbacks.allowed_urls[1]"


def test_the_signature_is_githubs_webhook_scheme() -> None:
    # GitHub's documented example ("Validating webhook deliveries").
    assert signature(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_the_key_is_the_files_text_without_surrounding_whitespace(policy: CallbackPolicy) -> None:
    assert policy.secret() == b"s3cret"
