"""The dashboard's state-changing requests: login, logout, and the operator actions.

Each action passes :func:`~tierbox.api.ui.web.actor_of_form` (same-site origin,
the session's CSRF token, ``operate`` scope: 403 otherwise), then calls the same
:mod:`tierbox.ops` function as the JSON API, so it is audited with the
operator's token name. The browser is sent back (303) to the page it came from
with what happened, or why it was refused, in the query string, signed for the
session (:func:`~tierbox.api.ui.web.back`): the page shows only a notice this
server wrote for this session, never free text someone put in a link.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.response import Redirect, Template

from outbox.errors import RedriveError
from tierbox.api import params
from tierbox.api.auth import INSECURE_DEV, TokenStore
from tierbox.api.ui.pages import GROUP_ACTION_LIMIT
from tierbox.api.ui.session import COOKIE, CSRF_FIELD
from tierbox.api.ui.web import LOGIN_PROBLEMS, actor_of_form, back, check_origin, codec, session_cookie, session_of
from tierbox.ops import control, group_actions
from tierbox.ops import dead_letters as dlq
from tierbox.ops.errors import RequestError, from_redrive_error
from tierbox.ops.models import MAX_TEXT


def _text(fields: dict[str, str], name: str, *, required: bool = False) -> str | None:
    value = (fields.get(name) or "").strip()
    if not value:
        if required:
            raise RequestError(422, f"{name}: required", field=name)
        return None
    if len(value) > MAX_TEXT or params.HOSTILE.search(value):
        raise RequestError(422, f"{name}: at most {MAX_TEXT} characters, no control characters", field=name)
    return value


@get("/login", include_in_schema=False)
async def login_form(request: Request[Any, Any, Any], state: State) -> Template | Redirect:
    """The login form (in insecure-dev mode, a session as ``insecure-dev`` without one)."""
    if state.auth_disabled:
        response = Redirect("/ui/tiers", status_code=303)
        response.set_cookie(session_cookie(request, codec(request).encode(codec(request).new(INSECURE_DEV))))
        return response
    problem = LOGIN_PROBLEMS.get(request.query_params.get("error") or "")
    return Template("login.html", context={"problem": problem, "screen": "login"})


@post("/login", include_in_schema=False, status_code=303)
async def login(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """Exchange an API token (posted once, never stored) for a session cookie."""
    check_origin(request)
    form = await request.form()
    secret = form.get("token")
    store: TokenStore = state.tokens
    principal = store.resolve(secret.strip()) if isinstance(secret, str) and secret.strip() else None
    if principal is None:
        return Redirect("/ui/login?error=token", status_code=303)
    response = Redirect("/ui/tiers", status_code=303)
    response.set_cookie(session_cookie(request, codec(request).encode(codec(request).new(principal))))
    return response


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    """End the session (the cookie is cleared; needs the CSRF token like every action)."""
    check_origin(request)
    found = session_of(request)
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if found is not None and not (isinstance(presented, str) and hmac.compare_digest(presented, found[1].csrf)):
        raise RequestError(403, "missing or wrong CSRF token", code="forbidden")
    response = Redirect("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@post("/dlq/{job_id:str}/redrive", include_in_schema=False, status_code=303)
async def redrive(request: Request[Any, Any, Any], state: State, job_id: params.JobIdPath) -> Redirect:
    """Redrive one dead letter as a new job (optionally on another tier); audited."""
    actor, fields = await actor_of_form(request)
    parsed = params.job_id(job_id)
    tier = params.tier(state.settings, _text(fields, "tier"))
    try:
        done = await dlq.redrive(state.engine, actor, parsed, tier=tier, reason=_text(fields, "reason"))
    except RedriveError as exc:
        return back(request, f"/ui/dlq/{parsed}", error=from_redrive_error(exc).message)
    return back(request, f"/ui/jobs/{done.new_job_id}", done=f"redriven from {parsed}")


@post("/dlq/{job_id:str}/discard", include_in_schema=False, status_code=303)
async def discard(request: Request[Any, Any, Any], state: State, job_id: params.JobIdPath) -> Redirect:
    """Discard one dead letter (kept for audit, never redriven); audited."""
    actor, fields = await actor_of_form(request)
    parsed = params.job_id(job_id)
    try:
        await dlq.discard(state.engine, actor, parsed, reason=_text(fields, "reason"))
    except RedriveError as exc:
        return back(request, f"/ui/dlq/{parsed}", error=from_redrive_error(exc).message)
    return back(request, f"/ui/dlq/{parsed}", done="discarded")


def _group_path(fingerprint: str) -> str:
    return f"/ui/dlq/groups/{quote(fingerprint, safe='')}"


@post("/dlq/groups/{fingerprint:str}/redrive", include_in_schema=False, status_code=303)
async def redrive_group(request: Request[Any, Any, Any], state: State,
                        fingerprint: Annotated[str, Parameter(max_length=128)]) -> Redirect:
    """Redrive up to GROUP_ACTION_LIMIT open dead letters of a group (the page showed the dry run); audited."""
    actor, fields = await actor_of_form(request)
    tier = params.tier(state.settings, _text(fields, "tier"))
    try:
        done = await group_actions.redrive_group(state.engine, actor, fingerprint, tier=tier,
                                                 reason=_text(fields, "reason"), limit=GROUP_ACTION_LIMIT)
    except RequestError as exc:
        return back(request, _group_path(fingerprint), error=exc.message)
    more = f"; {done.remaining} remain: redrive again to continue" if done.remaining else ""
    return back(request, _group_path(fingerprint), done=f"redriven {done.redriven} dead letter(s){more}")


@post("/dlq/groups/{fingerprint:str}/discard", include_in_schema=False, status_code=303)
async def discard_group(request: Request[Any, Any, Any], state: State,
                        fingerprint: Annotated[str, Parameter(max_length=128)]) -> Redirect:
    """Discard every open dead letter of a group (kept for audit, never redriven); audited."""
    actor, fields = await actor_of_form(request)
    try:
        done = await group_actions.discard_group(state.engine, actor, fingerprint, reason=_text(fields, "reason"))
    except RequestError as exc:
        return back(request, _group_path(fingerprint), error=exc.message)
    return back(request, _group_path(fingerprint), done=f"discarded {done.discarded} dead letter(s)")


@post("/dlq/groups/{fingerprint:str}/status", include_in_schema=False, status_code=303)
async def group_status(request: Request[Any, Any, Any], state: State,
                       fingerprint: Annotated[str, Parameter(max_length=128)]) -> Redirect:
    """Resolve, ignore or reopen a group (``status`` field), with an optional note; audited."""
    actor, fields = await actor_of_form(request)
    status = _text(fields, "status", required=True) or ""
    try:
        done = await group_actions.set_group_status(state.engine, actor, fingerprint, status,
                                                    note=_text(fields, "note"))
    except RequestError as exc:
        return back(request, _group_path(fingerprint), error=exc.message)
    return back(request, _group_path(fingerprint), done=f"{done.previous} -> {done.status}")


def _scope(fields: dict[str, str]) -> control.Scope:
    scope = fields.get("scope")
    if scope == "tier":
        return "tier"
    if scope == "task":
        return "task"
    raise RequestError(422, "scope: tier or task", field="scope")


def _name(state: State, scope: control.Scope, fields: dict[str, str]) -> str:
    name = _text(fields, "name", required=True) or ""
    return (params.tier(state.settings, name, "name") or name) if scope == "tier" else name


def _return_to(fields: dict[str, str]) -> str:
    target = fields.get("next", "")
    return target if target in ("/ui/tiers", "/ui/control") else "/ui/control"


@post("/control/pause", include_in_schema=False, status_code=303)
async def pause(request: Request[Any, Any, Any], state: State) -> Redirect:
    """Pause a tier or a task; audited."""
    actor, fields = await actor_of_form(request)
    scope = _scope(fields)
    name = _name(state, scope, fields)
    changed = await control.pause(state.engine, actor, scope, name, _text(fields, "reason"))
    return back(request, _return_to(fields),
                done=f"{scope} {name} paused" if changed else f"{scope} {name} was paused")


@post("/control/resume", include_in_schema=False, status_code=303)
async def resume(request: Request[Any, Any, Any], state: State) -> Redirect:
    """Resume a tier or a task; audited."""
    actor, fields = await actor_of_form(request)
    scope = _scope(fields)
    name = _name(state, scope, fields)
    changed = await control.resume(state.engine, actor, scope, name)
    return back(request, _return_to(fields),
                done=f"{scope} {name} resumed" if changed else f"{scope} {name} was not paused")


@post("/control/override", include_in_schema=False, status_code=303)
async def set_override(request: Request[Any, Any, Any], state: State) -> Redirect:
    """Route a task to another tier for some hours; audited (its waiting backlog moves too)."""
    actor, fields = await actor_of_form(request)
    task = _text(fields, "task", required=True) or ""
    tier = params.tier(state.settings, _text(fields, "tier", required=True)) or ""
    try:
        hours = float(fields.get("hours", ""))
    except ValueError:
        raise RequestError(422, "hours: a number of hours, e.g. 2 or 0.5", field="hours") from None
    end = control.expiry(None, hours)
    moved = await control.set_override(state.engine, actor, task, tier, end, _text(fields, "reason"))
    return back(request, "/ui/control",
                done=f"{task} goes to {tier} until {end:%Y-%m-%d %H:%M} UTC ({moved} moved)")


@post("/control/override/clear", include_in_schema=False, status_code=303)
async def clear_override(request: Request[Any, Any, Any], state: State) -> Redirect:
    """End a task's override now; audited."""
    actor, fields = await actor_of_form(request)
    task = _text(fields, "task", required=True) or ""
    changed = await control.clear_override(state.engine, actor, task)
    return back(request, "/ui/control", done=f"override of {task} ended" if changed else f"{task} had no override")


ROUTES = [login_form, login, logout, redrive, discard, redrive_group, discard_group, group_status,
          pause, resume, set_override, clear_override]
