# One image for every Tierbox process: `tierbox migrate`, `tierbox relay`, `tierbox worker ...`.
# Your application's task modules must be importable in the worker containers: build your own
# image FROM this one (or install your app into it) and set TIERBOX_APP / --app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Every folder of pyproject's package-dir, or pip stops on a missing one
# (tests/packaging/test_layout.py checks the list).
COPY pyproject.toml README.md ./
COPY outbox ./outbox
COPY tierbox ./tierbox
COPY api ./api
COPY celery_bridge ./celery_bridge
COPY cli ./cli
COPY flow ./flow
COPY migrations ./migrations
COPY ops ./ops
COPY relay ./relay
COPY scheduler ./scheduler
COPY webhooks ./webhooks
COPY workers ./workers
# otel-sdk: the processes export spans when OTEL_* is set (compose.yml points them at Jaeger).
RUN pip install '.[otel-sdk]' && useradd --system --no-create-home tierbox
# The demo's tasks (compose.yml runs them), outside /app so the build folders never shadow the install.
COPY examples /opt/tierbox-examples/examples
ENV PYTHONPATH=/opt/tierbox-examples
WORKDIR /

USER tierbox
ENTRYPOINT ["tierbox"]
CMD ["--help"]
