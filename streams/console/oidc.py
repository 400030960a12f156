"""OpenID Connect sign-in for the console (Authlib's Starlette client).

Configured by ``VIGIL_CONSOLE_OIDC_*``: the issuer (its discovery document is fetched at the
first sign-in) or, for a provider the console cannot reach at start, a local copy of the
discovery document (``oidc_metadata_file``). The authorization-code flow with ``state`` and
``nonce`` kept in the signed session; Authlib checks the ID token's signature, issuer,
audience and nonce. The user's name comes from ``oidc_username_claim`` (recorded on actions
as ``oidc:<name>``), the role from ``oidc_role_claim`` (the highest of viewer, clinician,
admin it names); a token naming no role is refused unless ``oidc_default_role`` is viewer.
"""

from __future__ import annotations

import json
from typing import Any

from authlib.integrations.starlette_client import OAuth, OAuthError
from starlette.requests import Request
from starlette.responses import Response

from streams.console.settings import ConsoleSettings
from streams.console.users import ROLES, User, valid_username
from vigil.errors import ConfigError

__all__ = ["OidcClient", "role_from_claims"]


def role_from_claims(claims: dict[str, Any], claim: str, default: str) -> str | None:
    """The highest role ``claims[claim]`` names (a string or a list), else ``default``
    (None for ``"none"``)."""
    value = claims.get(claim)
    named = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    found = [r for r in ROLES if r in named]
    if found:
        return found[-1]
    return None if default == "none" else default


class OidcClient:
    """One OpenID Connect provider.

    Raises:
        ConfigError: The metadata file is unreadable or lacks an endpoint.
    """

    def __init__(self, settings: ConsoleSettings) -> None:
        if settings.oidc_client_id is None or settings.oidc_client_secret is None:
            raise ConfigError("OIDC needs a client id and a client secret")
        self.settings = settings
        self.oauth = OAuth()
        endpoints: dict[str, Any] = {}
        if settings.oidc_metadata_file is not None:
            try:
                meta = json.loads(settings.oidc_metadata_file.read_text(encoding="utf-8"))
                endpoints = {
                    "authorize_url": meta["authorization_endpoint"],
                    "access_token_url": meta["token_endpoint"],
                    "jwks_uri": meta["jwks_uri"],
                    "issuer": meta.get("issuer", settings.oidc_issuer),
                }
                if "userinfo_endpoint" in meta:
                    endpoints["userinfo_endpoint"] = meta["userinfo_endpoint"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"unreadable OIDC metadata file: {exc}") from None
        else:
            issuer = str(settings.oidc_issuer).rstrip("/")
            endpoints = {"server_metadata_url": f"{issuer}/.well-known/openid-configuration"}
        self.oauth.register(
            name="vigil",
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret.get_secret_value(),
            client_kwargs={"scope": "openid profile email"},
            **endpoints,
        )
        self.client = self.oauth.create_client("vigil")

    async def redirect(self, request: Request) -> Response:
        """Send the browser to the provider's authorization endpoint."""
        target = self.settings.oidc_redirect_uri or str(request.url_for("oidc_callback"))
        response: Response = await self.client.authorize_redirect(request, target)
        return response

    async def user(self, request: Request) -> User:
        """Finish the flow: the signed-in user.

        Raises:
            PermissionError: The provider refused, the token is invalid, or it names no
                usable user name or role.
        """
        try:
            token = await self.client.authorize_access_token(request)
        except OAuthError as exc:
            raise PermissionError(f"the provider's answer was refused ({exc.error})") from None
        claims = dict(token.get("userinfo") or {})
        name = claims.get(self.settings.oidc_username_claim)
        if not isinstance(name, str) or not valid_username(name):
            raise PermissionError("the token names no usable user name")
        role = role_from_claims(
            claims, self.settings.oidc_role_claim, self.settings.oidc_default_role
        )
        if role is None:
            raise PermissionError("the token names no console role")
        return User(f"oidc:{name}", role)  # type: ignore[arg-type]
