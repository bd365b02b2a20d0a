"""``flwd :token``: mint a signed JWT with a deployment's own private key.

The server verifies it against the public half in ``auth.jwk_file``; see
docs/auth.rst for the whole set-up.
"""

from __future__ import annotations

import json
import re
import time

import click

from flwd_server.auth.keys import algorithm_of, load_private_key, mint, public_jwk
from flwd_server.auth.scopes import SCOPES, is_valid_scope
from flwd_server.config import load_settings

DURATION_RE = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_LIFETIME = 366 * 86400


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h``, ``30d`` -> seconds."""
    match = DURATION_RE.fullmatch(text)
    if not match:
        raise click.BadParameter(
            f"expected a duration such as 900, 15m, 1h or 30d, got {text!r}", param_hint="--lifetime"
        )
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if not 1 <= seconds <= MAX_LIFETIME:
        raise click.BadParameter("must be between 1 second and 366 days", param_hint="--lifetime")
    return seconds


def parse_scopes(values: tuple[str, ...]) -> list[str]:
    scopes = [scope for value in values for scope in value.replace(",", " ").split()]
    unknown = sorted({s for s in scopes if not is_valid_scope(s)})
    if unknown:
        raise click.BadParameter(
            f"unknown scope {', '.join(unknown)} (known: {', '.join(SCOPES)}; runs:read and runs:write may be "
            "narrowed to jobs as runs:write:SOURCE:JOB, each part lowercase name characters and '*')",
            param_hint="--scope",
        )
    if not scopes:
        raise click.BadParameter("name at least one scope", param_hint="--scope")
    return sorted(set(scopes))


@click.command(":token")
@click.option(
    "--key",
    "key_path",
    required=True,
    envvar="FLWD_SIGNING_KEY",
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="Private key: PEM, or a JWK (JSON) with 'd'.",
)
@click.option(
    "--subject", "--sub", "subject", required=True, help="Who the token is for (recorded on every run it submits)."
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help=f"A scope (repeatable, or space-separated): {', '.join(SCOPES)}; or runs:read/runs:write narrowed to "
    "jobs: runs:write:SOURCE:JOB ('*' globs, e.g. runs:write:tools:*).",
)
@click.option("--lifetime", default="1h", show_default=True, help="How long the token is valid: 900, 15m, 1h, 30d.")
@click.option("--issuer", help="The 'iss' claim (default: auth.issuer of --config).")
@click.option("--audience", help="The 'aud' claim (default: auth.audience of --config).")
@click.option("--kid", help="Key id in the header (default: the JWK's kid, else the key's RFC 7638 thumbprint).")
@click.option(
    "--config",
    "config_path",
    envvar="FLWD_CONFIG",
    type=click.Path(exists=True, dir_okay=False),
    help="Server config to take the issuer and audience from.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the token with its kid, algorithm and expiry as JSON.")
def token_command(
    key_path: str,
    subject: str,
    scopes: tuple[str, ...],
    lifetime: str,
    issuer: str | None,
    audience: str | None,
    kid: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Mint a signed JWT for this deployment's flwd server.

    \b
    flwd :token --key /etc/flwd/keys/KID.pem --config /etc/flwd/server.yaml \\
        --subject ci-runner --scope 'jobs:read runs:read runs:write' --lifetime 12h
    """
    granted = parse_scopes(scopes)
    seconds = parse_duration(lifetime)
    if issuer is None or audience is None:
        auth = load_settings(config_path).auth
        issuer = issuer or auth.issuer
        audience = audience or auth.audience
    if not issuer or not audience:
        raise click.UsageError(
            "give --issuer and --audience, or --config with auth.issuer and auth.audience (they must match the server's)"
        )
    if not subject.strip() or not subject.isprintable() or len(subject) > 255:
        raise click.BadParameter("expected 1-255 printable characters", param_hint="--subject")
    key, jwk_kid = load_private_key(key_path)
    kid = kid or jwk_kid or public_jwk(key)["kid"]
    now = int(time.time())
    token = mint(
        key, issuer=issuer, audience=audience, subject=subject, scopes=granted, lifetime=seconds, kid=kid, now=now
    )
    if as_json:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + seconds))
        click.echo(
            json.dumps(
                {
                    "token": token,
                    "kid": kid,
                    "alg": algorithm_of(key),
                    "subject": subject,
                    "scopes": granted,
                    "expires_at": expires,
                }
            )
        )
    else:
        click.echo(token)
