# One image for every Tierbox process: `tierbox migrate`, `tierbox relay`, `tierbox worker ...`.
# Your application's task modules must be importable in the worker containers: build your own
# image FROM this one (or install your app into it) and set TIERBOX_APP / --app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY outbox ./outbox
COPY relay ./relay
COPY workers ./workers
COPY api ./api
COPY migrations ./migrations
RUN pip install . && useradd --system --no-create-home tierbox

USER tierbox
ENTRYPOINT ["tierbox"]
CMD ["--help"]
