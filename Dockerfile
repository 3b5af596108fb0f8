# One image for every smartmine stage (simulators, ingest, analytics, alerts, dashboards build/push);
# docker-compose.yml picks the stage by its command. Python 3.11 as in CI.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY smartmine smartmine
COPY simulators simulators
COPY ingest ingest
COPY analytics analytics
COPY alerts alerts
COPY dashboards dashboards
COPY replay replay
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# An unprivileged user: the stages need no root, only their data folder.
RUN useradd --system --create-home --home-dir /var/lib/smartmine --uid 10001 smartmine
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Reads a mounted InfluxDB token file into SMARTMINE_INFLUX_TOKEN, then runs smartmine (deploy/smartmine/).
COPY deploy/smartmine/entrypoint.sh /usr/local/bin/smartmine-entrypoint
RUN chmod 0755 /usr/local/bin/smartmine-entrypoint
USER smartmine
WORKDIR /var/lib/smartmine
ENV SMARTMINE_DATA_DIR=/var/lib/smartmine \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["smartmine-entrypoint"]
CMD ["--help"]
