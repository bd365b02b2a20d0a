"""``flwd :sign IMAGE --key KEY``: sign a container image in cosign's key-based format, without cosign.

The image's digest (a tag is resolved once, and that digest is signed) gets a
simple-signing payload signed with the PEM private key, stored at the
``sha256-<hex>.sig`` tag with the ``dev.cosignproject.cosign/signature``
annotation, added to any signatures already there: the same code that signs
add-ons (``flwd :addon publish --sign-key``), so servers with the matching public
key in ``container.signature_keys`` verify it.
"""

from __future__ import annotations

import click

from flwd_server.containers.images import parse_image_ref
from flwd_server.containers.signatures import attach_signature

from .addon import registry_client, registry_options, signing_key


@click.command(":sign")
@click.argument("image")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM private key (password in FLWD_SIGN_KEY_PASSWORD).",
)
@registry_options
def sign_command(image: str, key_path: str, insecure: bool, config_path: str | None) -> None:
    """Sign IMAGE (registry/repo:tag or registry/repo@sha256:…) for flwd's image-signature check.

    Prints REGISTRY/REPO@DIGEST, the image that is now signed.

    \b
    flwd :sign registry.example.org/tools/greeter:1.2 --key cosign.pem
    """
    target = parse_image_ref(image, field="image")
    key = signing_key(key_path)
    registry = registry_client(target, insecure, config_path)
    try:
        digest = registry.require_manifest(target).digest  # a digest too: never sign an image that is not there
        tag = attach_signature(registry, target, digest, key)
    finally:
        registry.close()
    click.echo(f"{target.registry}/{target.repository}@{digest}")
    click.echo(f"signed: {target.registry}/{target.repository}:{tag}", err=True)
