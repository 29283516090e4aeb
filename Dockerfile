# Tollhouse in a container: docker build -t tollhouse . && docker compose up
# The image runs the gateway as an unprivileged user; its ledger and stored responses
# live in the /var/lib/tollhouse volume; its health check asks /readyz.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocols ./protocols
COPY providers ./providers
COPY actors ./actors
COPY gateway ./gateway
RUN pip install . && rm -rf /src

COPY docker/config.json /etc/tollhouse/config.json
RUN useradd --system --uid 10001 --no-create-home --home-dir /var/lib/tollhouse --shell /usr/sbin/nologin tollhouse \
    && mkdir -p /var/lib/tollhouse \
    && chown tollhouse:tollhouse /var/lib/tollhouse

USER tollhouse
WORKDIR /var/lib/tollhouse
VOLUME ["/var/lib/tollhouse"]
EXPOSE 8787

HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8787/readyz', timeout=2).status == 200 else 1)"]

# SIGTERM starts the graceful stop; give it more than server.shutdown_grace_s (30 s)
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollhouse"]
CMD ["serve", "--config", "/etc/tollhouse/config.json"]
