"""The operator dashboard: server-rendered screens under ``/ui`` (Jinja templates, htmx polling).

:func:`routers` gives the routers :func:`tierbox.api.app.create_app` mounts;
:func:`template_config` the Jinja environment. Every asset is in ``static/``
(htmx pinned, no CDN); see docs/dashboard.md.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from tierbox.api.ui import actions, filters, pages
from tierbox.api.ui.web import LoginRequired, login_redirect, secure_headers

HERE = Path(__file__).parent
#: The pinned htmx (npm ``htmx.org``), vendored in ``static/``.
HTMX_VERSION = "2.0.4"


def routers() -> list[Router]:
    """The /ui pages and actions, and /ui/static; all answer with the security headers."""
    ui = Router(path="/ui", route_handlers=[*pages.ROUTES, *actions.ROUTES], after_request=secure_headers,
                exception_handlers={LoginRequired: login_redirect}, include_in_schema=False)
    static = create_static_files_router(path="/ui/static", directories=[HERE / "static"], name="ui-static",
                                        after_request=secure_headers, include_in_schema=False)
    return [ui, static]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja templates of ``templates/`` (autoescaped) with the dashboard's filters."""
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine,
                          engine_callback=filters.register)
