# The pg2ch code location: `dagster api grpc` serving user_code.definitions. Also the image of
# every run pod (K8sRunLauncher).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

# The runtime user, uid 1000 (the chart's runAsUser), needs a home it can write: Dagster keeps
# per-user telemetry state in ~/.dagster at every step, whatever DAGSTER_HOME says. The chart
# mounts dagster.yaml into DAGSTER_HOME; the directory must exist and belong to that user too,
# or Kubernetes creates it owned by root.
RUN groupadd --gid 1000 dagster \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/dagster \
        --shell /usr/sbin/nologin dagster \
    && mkdir -p /opt/dagster/app "$DAGSTER_HOME" \
    && chown 1000:1000 "$DAGSTER_HOME"

WORKDIR /opt/dagster/app

# Dependencies first, in their own layer, at the exact versions of requirements.lock: a code
# change reuses this layer and rebuilds in seconds, and every build gets the same packages.
COPY requirements.lock ./
RUN pip install -r requirements.lock

# The project itself.
COPY pyproject.toml README.md ./
COPY user_code ./user_code
RUN pip install --no-deps .

USER 1000:1000
EXPOSE 4000
# The same arguments, in the same order, as the chart gives the code server's container.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "user_code.definitions"]
