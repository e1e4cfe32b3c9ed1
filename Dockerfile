# voicebridge: the ACS <-> Voice Live bridge on uvicorn (docs/deploy.md).
#
#   az acr build --registry <acr> --image voicebridge:<tag> .
#   docker build -t voicebridge .          (where a Docker engine is available)
#
# Two stages: `build` makes a virtualenv (dependencies first, in their own cached
# layer, then the package); `runtime` copies only that virtualenv onto a clean slim
# image and runs it as an unprivileged user. No compilers, pip caches, sources or
# secrets reach the final image; configuration comes from the environment at run time.
# The package in it is the service only: `serve` and `doctor`, without the simulator
# (voicebridge/sim) and the developer tools (voicebridge/tools).
#
# Not built here: the machines this was written on have no Docker engine. The CMD is
# exercised by tests/infra/test_dockerfile.py, which runs the same command locally.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# 1. Dependencies only, read from pyproject.toml: this layer is rebuilt only when
#    pyproject.toml changes, not on every source edit. Every dependency ships
#    manylinux wheels for CPython 3.11, so no compiler is installed.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install --requirement requirements.txt

# 2. The package itself (no dependency resolution: they are all installed above), the
#    service only: the simulator (voicebridge/sim, with its WAVs) and the developer tools
#    (voicebridge/tools: bench, resample, loadtest) are removed before the install, so
#    `simulate`, `emulator`, `fake-acs`, `resample`, `bench` and `loadtest` say they are
#    not installed here. `serve` and `doctor` (and the prompt WAVs in voicebridge/assets)
#    stay. The build fails if either package is still importable or a `--help` breaks.
COPY README.md ./
COPY src ./src
RUN rm -rf src/voicebridge/sim src/voicebridge/tools \
 && pip install --no-deps . \
 && python -c "import importlib.util as u, sys; left = [m for m in ('voicebridge.sim', 'voicebridge.tools') if u.find_spec(m)]; sys.exit(f'not excluded: {left}' if left else 0)" \
 && voicebridge --help > /dev/null \
 && voicebridge serve --help > /dev/null \
 && voicebridge doctor --help > /dev/null \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric uid/gid so "run as non-root" can be verified from the image alone.
RUN groupadd --system --gid 10001 voicebridge \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin voicebridge \
 && mkdir -p /app/logs \
 && chown -R 10001:10001 /app

COPY --from=build /opt/venv /opt/venv

# Non-secret runtime defaults only. DRAIN_GRACE_S and MAX_MEDIA_MESSAGE_BYTES are
# also read by the app (Settings); the CMD below derives uvicorn's limits from them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRAIN_GRACE_S=120

# LOG_DIR defaults to ./logs: per-call JSONL logs land in /app/logs (ephemeral).
WORKDIR /app
USER 10001:10001
EXPOSE 8000

# For `docker run` and other engines; Azure Container Apps ignores HEALTHCHECK and
# uses the liveness/readiness/startup probes in infra/modules/containerapp.bicep.
# python, not curl: the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# `voicebridge serve` runs uvicorn with the options in voicebridge.server.uvicorn_options
# (proxy headers trusted: Container Apps terminates TLS and only its ingress reaches the
# container; no per-message deflate; media frames above MAX_MEDIA_MESSAGE_BYTES close
# the socket before buffering) and, unlike plain `uvicorn`, drains on SIGTERM: readiness
# turns false, no new calls, live calls get DRAIN_GRACE_S to finish and then hear a
# goodbye. Plain uvicorn would close every media WebSocket (1012) at once.
# WORKERS=N runs N worker processes, each its own node on port 8000 (SO_REUSEPORT),
# under a small supervisor that forwards SIGTERM so every worker drains
# (voicebridge.workers); unset or 1, one process as before.
# Exec form: the process (the supervisor, with WORKERS > 1) is PID 1 and receives
# SIGTERM itself.
CMD ["voicebridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
