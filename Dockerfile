# One image for every StreamFlow process (init job, producer, consumer, API).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 STREAMFLOW_NO_PROGRESS=1
COPY pyproject.toml README.md ./
COPY streamflow ./streamflow
COPY producer ./producer
COPY consumer ./consumer
COPY api ./api
COPY feature_repo ./feature_repo
RUN pip install .
ENV STREAMFLOW_FEATURE_REPO=/app/feature_repo STREAMFLOW_DATA_DIR=/app/data
CMD ["streamflow", "--help"]
