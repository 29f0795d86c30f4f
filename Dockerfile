# The writebus image: the bus service (`writebus serve`) and the client library.
#
#   docker build -t writebus .
#   docker run --env-file writebus.env writebus          # runs `writebus serve`
#
# Settings come from the environment only (`writebus serve --help` lists them); nothing deployment
# specific is baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build needs, so no local .env, virtualenv or data dir leaks into the
# image. README.md* is a pattern so the build still works while the README does not exist.
COPY pyproject.toml README.md* ./
COPY writebus ./writebus
COPY bus ./bus
COPY client ./client
RUN pip install '.[service,speed]' \
    && cd / && rm -rf /src

# Run unprivileged: the service needs no file system access.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin writebus
USER writebus
WORKDIR /

# /healthz answers 200 while the node reaches NATS and its database (WRITEBUS_HTTP_ADDR,
# default 0.0.0.0:9091). Containers of this image that run an app instead disable it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/healthz', timeout=2)"]

CMD ["writebus", "serve"]
