# medgen image: the same install steps as the README (`make setup`), into /opt/venv.
# Build: docker build -t medgen .      Run the pipeline: docker run -v $PWD/data:/app/data medgen make run
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md Makefile ./
COPY src ./src
RUN make setup VENV=/opt/venv PYTHON=python3.11
COPY . .
ENV PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_TRACKING_URI=sqlite:////app/mlruns/mlflow.db
CMD ["medgen", "--help"]
