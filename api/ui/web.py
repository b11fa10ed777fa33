"""The dashboard's request plumbing: who is logged in, the CSRF and origin checks, the security headers.

Every page asks :func:`viewer` for the logged-in principal (no session: a
redirect to the login page); every action asks :func:`actor_of_form`, which
also checks the request's ``Origin``, the session's CSRF token and the
``operate`` scope, refusing with 403 before anything changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import urlencode, urlsplit

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.response import Redirect

from tierbox.api.auth import Principal
from tierbox.api.ui.session import COOKIE, CSRF_FIELD, CSRF_HEADER, MAX_AGE_S, Session, SessionCodec, principal_of
from tierbox.ops.audit import Actor
from tierbox.ops.errors import RequestError

#: Content-Security-Policy of every /ui response: scripts and styles from this origin only (no inline
#: script, no eval), never framed, forms posting only here.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


#: Query parameter carrying the signature of the ``done``/``error`` notice an action redirected with.
NOTICE_SIG = "n"
#: What the login page may say after a refused login (``?error=CODE``): a fixed set, never text from the URL.
LOGIN_PROBLEMS = {"token": "unknown or revoked token"}


class LoginRequired(Exception):  # noqa: N818 - a control-flow signal, not an error report
    """No valid session: the page redirects to the login form."""


def login_redirect(request: Request[Any, Any, Any], _: LoginRequired) -> Response[Any]:
    """Send the browser to the login page (htmx partials get ``HX-Redirect`` so the whole page goes)."""
    if request.headers.get("hx-request"):
        return Response("", status_code=200, headers={"HX-Redirect": "/ui/login"})
    return Redirect("/ui/login", status_code=303)


async def secure_headers(response: Response[Any]) -> Response[Any]:
    """``after_request`` of the /ui routers: the security headers, and no caching of operator data."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def codec(request: Request[Any, Any, Any]) -> SessionCodec:
    """The app's session codec."""
    value: SessionCodec = request.app.state.ui_sessions
    return value


def session_of(request: Request[Any, Any, Any]) -> tuple[Principal, Session] | None:
    """The logged-in principal and its session, or None."""
    session = codec(request).decode(request.cookies.get(COOKIE))
    if session is None:
        return None
    state = request.app.state
    principal = principal_of(session, state.config.tokens, state.auth_disabled)
    return (principal, session) if principal is not None else None


def viewer(request: Request[Any, Any, Any]) -> tuple[Principal, Session]:
    """The logged-in principal and session; raises :class:`LoginRequired` without one."""
    found = session_of(request)
    if found is None:
        raise LoginRequired
    return found


def session_cookie(request: Request[Any, Any, Any], value: str, max_age: int = MAX_AGE_S) -> Cookie:
    """The session cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, for /ui only."""
    return Cookie(key=COOKIE, value=value, max_age=max_age, path="/ui", httponly=True, samesite="strict",
                  secure=request.url.scheme == "https")


def check_origin(request: Request[Any, Any, Any]) -> None:
    """Refuse (403) a POST whose ``Origin`` (or, without one, ``Referer``) is another site."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return  # not sent by a browser; the CSRF token still has to match
    parts = urlsplit(source)
    if parts.netloc != request.headers.get("host", ""):
        raise RequestError(403, "cross-site request refused", code="forbidden")


async def actor_of_form(request: Request[Any, Any, Any]) -> tuple[Actor, dict[str, str]]:
    """The audited actor of a dashboard action and its form fields, after every check.

    403 when the origin is another site, the CSRF token is missing or wrong, or the principal
    may only read; a missing session is a 403 too (an action is never redirected to a login)."""
    check_origin(request)
    found = session_of(request)
    if found is None:
        raise RequestError(403, "log in first", code="forbidden")
    principal, session = found
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    presented = fields.pop(CSRF_FIELD, None) or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise RequestError(403, "missing or wrong CSRF token: reload the page and try again", code="forbidden")
    if not principal.may("operate"):
        raise RequestError(403, f"token {principal.name!r} has scope {principal.scope!r}; this needs 'operate'",
                           code="forbidden")
    return Actor.of(principal, request.client.host if request.client else None), fields


def _notice_mac(session: Session, kind: str, text: str) -> str:
    # Keyed with the session's CSRF token (secret to that browser): a link someone else crafts, or a
    # notice from another operator's session, does not verify, so the banner only shows what this
    # server said to this session after one of its actions.
    digest = hmac.new(session.csrf.encode(), f"{kind}\0{text}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def back(request: Request[Any, Any, Any], path: str, *, done: str | None = None,
         error: str | None = None) -> Redirect:
    """303 to ``path`` with a notice (``done``) or a refusal (``error``) to show, signed for this session.

    The page shows the text only if the signature matches (:func:`notices`): the banner never repeats
    free text from a URL that this server did not write for this session."""
    found = session_of(request)
    pairs = [(kind, text) for kind, text in (("done", done), ("error", error)) if text]
    if not pairs or found is None:
        return Redirect(path, status_code=303)
    kind, text = pairs[0]
    query = urlencode({kind: text, NOTICE_SIG: _notice_mac(found[1], kind, text)})
    return Redirect(f"{path}?{query}", status_code=303)


def notices(request: Request[Any, Any, Any], session: Session) -> tuple[str | None, str | None]:
    """The (notice, problem) to show: the query's ``done``/``error`` when signed for ``session``, else none."""
    signature = request.query_params.get(NOTICE_SIG) or ""
    shown: dict[str, str | None] = {"done": None, "error": None}
    for kind in shown:
        text = request.query_params.get(kind)
        if text and hmac.compare_digest(signature.encode(), _notice_mac(session, kind, text).encode()):
            shown[kind] = text
    return shown["done"], shown["error"]
