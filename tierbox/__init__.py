"""Tierbox's processes and operator tools, installed under one name.

``pip install tierbox`` adds exactly two names to the import namespace: ``outbox``
(the client API applications import) and ``tierbox`` (everything else). In the
repository each part keeps a top-level folder of its own; the wheel maps them with
setuptools' ``package-dir`` (see ``pyproject.toml``), and the links in this folder
give a checkout the same layout, so tests, mypy and a plain ``python -c`` import
them by the installed names too:

==========================  ===================  ==================================================
installed name              repository folder    what it holds
==========================  ===================  ==================================================
``tierbox.relay``           ``relay/``           the relay process (outbox rows to tier queues)
``tierbox.workers``         ``workers/``         worker pools: consume, run handlers, record outcomes
``tierbox.flow``            ``flow/``            rate limits, concurrency limits, breakers (Redis)
``tierbox.scheduler``       ``scheduler/``       the periodic (cron) scheduler process
``tierbox.ops``             ``ops/``             operator services the API and the CLI share
``tierbox.api``             ``api/``             the Litestar admin HTTP app
``tierbox.cli``             ``cli/``             the ``tierbox`` command line
``tierbox.migrations``      ``migrations/``      alembic revisions of the ``outbox`` schema
``tierbox.webhooks``        ``webhooks/``        completion webhooks' delivery task (signed POSTs)
==========================  ===================  ==================================================

``outbox`` imports nothing from ``tierbox``; ``tierbox`` packages import ``outbox``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tierbox")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
