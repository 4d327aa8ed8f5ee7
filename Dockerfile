# The plaster image: the CLI, the Ray nodes and the MLflow server of docker-compose.yml, and
# the image KubeRay runs (clusters/kuberay/). Every process of a Ray cluster must run the same
# Python, Ray and plaster, so one image serves them all.
#
#   docker build -t plaster:cpu .
#   docker build -t plaster:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#
# The GPU variant needs no CUDA base image: PyPI's Linux torch wheel is the CUDA build and
# carries its CUDA libraries as wheels; the NVIDIA container runtime mounts the driver at run
# time. (TensorRT is not in either image: see tests/gpu for what it needs.)

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# wget: KubeRay's default liveness/readiness probes of Ray pods (older operators) call it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# torch first, pinned, from TORCH_INDEX_URL: PyTorch's CPU index by default, since PyPI's Linux
# wheel is the multi-GB CUDA build (wanted only on GPU nodes). constraints.txt pins
# torch==2.13.0, which also admits PyTorch's local builds (2.13.0+cpu).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY constraints.txt ./
RUN pip install -c constraints.txt torch==2.13.0 --index-url "${TORCH_INDEX_URL}"

# The dependencies (~2 GB) in their own layer, rebuilt only when pyproject.toml or
# constraints.txt change: install them against an empty package, then drop it.
# boto3 is not a dependency of the package; MLflow's S3 artifact store (mlflow server
# --artifacts-destination s3://...) and S3 clients in this image need it.
COPY pyproject.toml ./
RUN mkdir orchestrator && touch orchestrator/__init__.py \
    && pip install -c constraints.txt . boto3 \
    && pip uninstall -y plaster \
    && rm -rf orchestrator build *.egg-info

COPY orchestrator ./orchestrator
RUN pip install --no-deps . && rm -rf build *.egg-info
COPY pipelines ./pipelines

# Run as a user, never root. /var/lib/plaster exists and is theirs, so a named volume mounted
# there starts with that owner.
RUN useradd --create-home --uid 1000 plaster \
    && mkdir -p /var/lib/plaster \
    && chown plaster:plaster /var/lib/plaster
USER plaster

ENV PLASTER_HOME=/var/lib/plaster \
    MLFLOW_DISABLE_TELEMETRY=true \
    RAY_USAGE_STATS_ENABLED=0

CMD ["plaster", "--help"]
