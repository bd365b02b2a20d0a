"""``flwd :keys``: key pairs and the JWKS file of a deployment (create, list, rotate out)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from flwd_server.auth.jwks import SUPPORTED_ALGORITHMS, parse_jwks
from flwd_server.auth.keys import KEY_ALGORITHMS, add_key, generate, private_pem, public_jwk, remove_key, write_atomic


@click.group(":keys")
def keys_group() -> None:
    """Signing keys and the JWKS file the server verifies tokens with."""


@keys_group.command("new")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False),
    help="Where the private key (KID.pem) is written.",
)
@click.option(
    "--alg",
    "algorithm",
    type=click.Choice(KEY_ALGORITHMS),
    default="ES256",
    show_default=True,
    help="Signature algorithm of the new key.",
)
@click.option("--kid", help="Key id (default: the RFC 7638 thumbprint of the public key).")
@click.option(
    "--jwks",
    "jwks_path",
    type=click.Path(dir_okay=False),
    help="JWKS file to add the public key to (default: DIR/jwks.json; created if missing).",
)
def new_key(directory: str, algorithm: str, kid: str | None, jwks_path: str | None) -> None:
    """Create a key pair: the private key in DIR, its public half added to the JWKS.

    Adding a key to an existing JWKS is the first step of a rotation: the
    server picks the file up without a restart.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = generate(algorithm)
    jwk = public_jwk(key, kid)
    if not all(c.isalnum() or c in "-_." for c in jwk["kid"]):
        raise click.BadParameter("use letters, digits, '-', '_' and '.'", param_hint="--kid")
    key_path = folder / f"{jwk['kid']}.pem"
    if key_path.exists():
        raise click.ClickException(f"{key_path} exists; choose another --kid")
    jwks = Path(jwks_path) if jwks_path else folder / "jwks.json"
    kids = add_key(jwks, jwk)
    write_atomic(key_path, private_pem(key), 0o600)
    click.echo(f"kid:         {jwk['kid']} ({algorithm})")
    click.echo(f"private key: {key_path} (mode 0600: it signs tokens, keep it off the server if you can)")
    click.echo(f"JWKS:        {jwks} (keys: {', '.join(kids)}; point auth.jwk_file at it)")
    kid_option = (
        f" --kid {jwk['kid']}" if kid else ""
    )  # a PEM file does not carry its kid; the thumbprint is recomputed
    click.echo(
        f"mint with:   flwd :token --key {key_path}{kid_option} --subject WHO --scope SCOPES --config SERVER.yaml"
    )


@keys_group.command("list")
@click.argument("jwks_path", type=click.Path(exists=True, dir_okay=False))
def list_keys(jwks_path: str) -> None:
    """Show which keys of a JWKS file a flwd server would use, and why others not."""
    try:
        keyset = parse_jwks(Path(jwks_path).read_bytes(), SUPPORTED_ALGORITHMS)
    except ValueError as exc:
        raise click.ClickException(f"{jwks_path}: {exc}") from None
    for kid, key in keyset.keys.items():
        click.echo(f"usable   {kid}  {key.algorithm_name}")
    for reason in keyset.skipped:
        click.echo(f"skipped  {reason}")
    if not keyset.keys:
        raise click.ClickException(f"{jwks_path} holds no usable key; a server would refuse to start")


class KidCommand(click.Command):
    """A kid is a base64url thumbprint, so one in 64 starts with "-" (``-9afQh...``): a word that is not
    one of the command's own options is the kid, never an unknown option or a cluster holding ``-h``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own = {name for param in self.get_params(ctx) for name in (*param.opts, *param.secondary_opts)}
        words, dashed, takes_value = [], [], False
        for index, word in enumerate(args):
            if word == "--" and not takes_value:
                dashed += args[index + 1 :]
                break
            if takes_value or not word.startswith("-") or word == "-" or word.split("=", 1)[0] in own:
                words.append(word)
                takes_value = word in own and word not in ("-h", "--help")
            else:
                dashed.append(word)
        return super().parse_args(ctx, [*words, "--", *dashed] if dashed else words)


@keys_group.command("remove", cls=KidCommand)
@click.argument("kid")
@click.option("--jwks", "jwks_path", required=True, type=click.Path(exists=True, dir_okay=False), help="The JWKS file.")
def remove(kid: str, jwks_path: str) -> None:
    """Drop KID from the JWKS: tokens signed with it stop working at once (no restart)."""
    left = remove_key(jwks_path, kid)
    click.echo(
        f"removed {kid}; {os.fspath(jwks_path)} now holds: {', '.join(left) or '(no keys: every token is refused)'}"
    )
