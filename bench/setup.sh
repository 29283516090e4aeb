#!/usr/bin/env bash
# Install what the bench drives, OUTSIDE the repo (never into the project's venv):
#   wrk, nginx-light        Debian packages
#   LiteLLM proxy           its own venv:   $TOOLS/litellm-venv
#   Portkey gateway         npm, pinned:    $TOOLS/portkey
#   py-spy + matplotlib     a tools venv:   $TOOLS/tools-venv (plot and profile)
# TOOLS defaults to /opt/tollhouse-bench (override with TOLLHOUSE_BENCH_TOOLS).
# Each step is independent: one that fails leaves its arm "not_installed" in the results.
set -u
TOOLS="${TOLLHOUSE_BENCH_TOOLS:-/opt/tollhouse-bench}"
mkdir -p "$TOOLS"
status=0

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && apt-get install -y -q wrk nginx-light || status=1
    else
        sudo apt-get update -q && sudo apt-get install -y -q wrk nginx-light || status=1
    fi
fi

if [ ! -x "$TOOLS/litellm-venv/bin/litellm" ]; then
    python3 -m venv "$TOOLS/litellm-venv" &&
        "$TOOLS/litellm-venv/bin/pip" install -q 'litellm[proxy]' || status=1
fi

if [ ! -f "$TOOLS/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
    mkdir -p "$TOOLS/portkey"
    # The override matters: with the @hono/node-server npm picks by default every
    # streaming request fails with HTTP 500 (TypeError: immutable, Portkey-AI/gateway#1389).
    printf '{"dependencies":{"@portkey-ai/gateway":"^1.15.2"},"overrides":{"@hono/node-server":"1.13.5"}}\n' \
        > "$TOOLS/portkey/package.json"
    (cd "$TOOLS/portkey" && npm install --no-audit --no-fund) || status=1
fi

if [ ! -x "$TOOLS/tools-venv/bin/py-spy" ]; then
    python3 -m venv "$TOOLS/tools-venv" &&
        "$TOOLS/tools-venv/bin/pip" install -q py-spy matplotlib || status=1
fi

echo "bench tools in $TOOLS (status $status)"
exit $status
