"""Bearer tokens and what they may do: the dev token, signed JWTs verified against a JWKS, a deployment's own keys."""
