# medgen image: the same install steps as the README (`make setup`), into /opt/venv.
# Build:              docker build -t medgen .
# Serve (default):    docker run -p 3000:3000 -v $PWD/models/export:/app/models/export medgen
#                     (ONNX models from `medgen stage export`; or -e MEDGEN_MODEL_SOURCE=mlflow with
#                      -e MLFLOW_TRACKING_URI=... to serve models:/medgen-*@champion)
# Run the pipeline:   docker run -v $PWD/data:/app/data -v $PWD/models:/app/models medgen make run
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md Makefile ./
COPY src ./src
RUN make setup VENV=/opt/venv PYTHON=python3.11
COPY . .
ENV PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_TRACKING_URI=sqlite:////app/mlruns/mlflow.db \
    MEDGEN_MODEL_DIR=/app/models/export
EXPOSE 3000
# The service: BentoML over onnxruntime (no torch import at serve time). GET /healthz for probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=4)"
CMD ["bentoml", "serve", "serving.service:MedGen", "--host", "0.0.0.0", "--port", "3000"]
