# medgen images: one Dockerfile, two targets (docs/serving.md, "Container", has every command).
#
#   serve (default): the inference service only: bentoml, onnxruntime, numpy, pillow and serving/ (no torch,
#       no training code), an unprivileged user, HEALTHCHECK on /healthz, graceful stop on SIGTERM (< 10 s).
#   pipeline: the full pinned stack (requirements.lock) for `dvc repro` / `make run` inside a container.
#
#   docker build -t medgen .                                   # serve; models mounted at run time
#   docker build --build-arg MODELS=models/export -t medgen .  # serve with the exported models baked in
#   docker build --target pipeline -t medgen-pipeline .
#   (podman: the same, plus --format docker so that HEALTHCHECK is kept)
#
# ARG BASE_IMAGE: any Debian-like image with python3 (3.11) and its venv module; the default is what users pull.
# ARG PIP_CERT: a CA bundle for pip inside the build, mounted for the build only
#   (podman build -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt);
#   nothing of the build machine is copied into an image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv

# ---------------------------------------------------------------- serve: dependencies in their own stage
FROM python-base AS serve-deps
ARG PIP_CERT=
COPY requirements.lock serving/requirements.txt /tmp/req/
# -c requirements.lock: every transitive version is the one the test suite ran with
RUN pip install ${PIP_CERT:+--cert "$PIP_CERT"} -c /tmp/req/requirements.lock -r /tmp/req/requirements.txt \
    && rm -rf /tmp/req

# ---------------------------------------------------------------- pipeline: the whole pinned stack
FROM python-base AS pipeline
ARG PIP_CERT=
# make for `make run`; no git: the context has no .git (.dockerignore), DVC runs without an SCM here
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
# The lock alone first: a code change does not reinstall the GBs of torch and CUDA wheels. One stage, not a
# deps stage copied over: `COPY --from` of a 7 GB venv doubles the build's disk and adds nothing to the image.
COPY requirements.lock /tmp/req/
RUN pip install ${PIP_CERT:+--cert "$PIP_CERT"} -r /tmp/req/requirements.lock && rm -rf /tmp/req
WORKDIR /app
COPY . .
# /app writable for any uid: `docker run --user "$(id -u):$(id -g)"` leaves the outputs in mounted folders
# owned by the user, not root (DVC, the stage locks and MLflow write under /app).
RUN pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps -e . && dvc config --local core.no_scm true \
    && chmod -R a+rwX /app
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_TRACKING_URI=sqlite:////app/mlruns/mlflow.db HOME=/tmp
# The full profile by default; docs/serving.md ("Container") has the smoke run and the mounts
CMD ["make", "run", "VENV=/opt/venv"]

# ---------------------------------------------------------------- serve (default target: the last stage)
FROM python-base AS serve
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin medgen
COPY --from=serve-deps /opt/venv /opt/venv
WORKDIR /app
COPY serving ./serving
# Models: mounted at run time over /app/models/export (default: a placeholder README), or baked in with
# --build-arg MODELS=models/export. Root-owned, read-only for the service: what the manifest lists is served.
ARG MODELS=serving/no-models
COPY ${MODELS} /app/models/export
# Bind address and port as BentoML reads them (override with -e); a public bind needs MEDGEN_API_KEYS
# (or MEDGEN_API_KEYS_FILE), or MEDGEN_ALLOW_ANONYMOUS=1 said explicitly: the service refuses otherwise.
ENV MEDGEN_MODEL_DIR=/app/models/export BENTOML_HOST=0.0.0.0 BENTOML_PORT=3000 \
    BENTOML_HOME=/tmp/bentoml BENTOML_DO_NOT_TRACK=true HOME=/tmp
USER 10001
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['BENTOML_PORT']}/healthz\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["bentoml", "serve", "serving.service:MedGen", "--timeout-graceful-shutdown", "5"]
