# One image for every StreamFlow process (init job, producer, consumer, API).
# Dependencies first, from the hashed lock (requirements.lock, `scripts/lock.sh`), in a layer of
# their own: an edit of the sources does not reinstall Feast. The processes run as an unprivileged
# user; /app/data and /app/mlartifacts (the snapshots and models volumes) are theirs.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 STREAMFLOW_NO_PROGRESS=1
RUN useradd --system --create-home --uid 10001 streamflow
WORKDIR /app
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY streamflow ./streamflow
COPY producer ./producer
COPY consumer ./consumer
COPY api ./api
COPY feature_repo ./feature_repo
RUN pip install --no-deps . && mkdir -p /app/data /app/mlartifacts && chown streamflow:streamflow /app/data /app/mlartifacts
ENV STREAMFLOW_FEATURE_REPO=/app/feature_repo STREAMFLOW_DATA_DIR=/app/data STREAMFLOW_MLFLOW_ARTIFACTS=/app/mlartifacts
USER streamflow
CMD ["streamflow", "--help"]
