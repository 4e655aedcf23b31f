# The pg2ch code location: `dagster api grpc` serving user_code.definitions. Also the image of
# every run pod (K8sRunLauncher).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

# The chart mounts dagster.yaml into DAGSTER_HOME; the directory must exist and belong to
# the runtime user, or Kubernetes creates it owned by root.
RUN groupadd --gid 1000 dagster \
    && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin dagster \
    && mkdir -p /opt/dagster/app "$DAGSTER_HOME" \
    && chown 1000:1000 "$DAGSTER_HOME"

WORKDIR /opt/dagster/app

# Dependencies first, in their own layer: read from pyproject.toml alone, so a code change
# reuses this layer and rebuilds in seconds. The build backend is installed too, so the
# project itself installs below without fetching anything.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself.
COPY README.md ./
COPY user_code ./user_code
RUN pip install --no-deps --no-build-isolation .

USER 1000:1000
EXPOSE 4000
CMD ["dagster", "api", "grpc", "-m", "user_code.definitions", "-h", "0.0.0.0", "-p", "4000"]
