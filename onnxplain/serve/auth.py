"""The optional bearer token: every route but health, readiness and ping needs `Authorization: Bearer TOKEN`."""
from __future__ import annotations

import hmac
import os

TOKEN_ENV = "ONNXPLAIN_TOKEN"
# routes a probe or load balancer reaches without the token (paths relative to the app's root)
PUBLIC = frozenset({"/health", "/readyz", "/ping", "/v2/health/live", "/v2/health/ready"})


def token_from(option: str | None) -> str | None:
    """The token to require: the option, else the ONNXPLAIN_TOKEN environment variable, else none."""
    token = option if option is not None else os.environ.get(TOKEN_ENV)
    return token or None


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` as a bearer token (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


UNAUTHORIZED = "This server needs a bearer token; send the header 'Authorization: Bearer TOKEN'."
