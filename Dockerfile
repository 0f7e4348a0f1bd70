# iotdps in a container: `docker build -t iotdps .` (or `docker compose up`, compose.yaml).
# Slim Python base, the wheel built in a first stage, a non-root user, /var/lib/iotdps as the
# data volume (database on SQLite, TLS keys, access policies), and /healthz as the health check.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/iotdps --shell /usr/sbin/nologin iotdps \
    && install -d -o iotdps -g iotdps -m 0700 /var/lib/iotdps
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'iotdps[postgres]' && rm -rf /wheels
ENV IOTDPS_DATA_DIR=/var/lib/iotdps \
    IOTDPS_DPS_BIND=0.0.0.0 \
    IOTDPS_MANAGEMENT_BIND=0.0.0.0 \
    IOTDPS_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/iotdps"]
# 8883 MQTT (DPS and hubs), 443 HTTPS (DPS REST, MQTT over websockets), 8443 management API,
# console and the /healthz, /readyz, /metrics probes. A non-root user binds 443 because Docker
# sets net.ipv4.ip_unprivileged_port_start=0 in the container's network namespace (compose.yaml
# says so explicitly); elsewhere set IOTDPS_HTTPS_PORT to a high port.
EXPOSE 8883 443 8443
USER iotdps
# The server CA is made on first start; the check trusts it and nothing else.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import ssl, urllib.request as u; c = ssl.create_default_context(cafile='/var/lib/iotdps/tls/server-ca.pem'); c.check_hostname = False; u.urlopen('https://127.0.0.1:8443/healthz', context=c, timeout=4)"]
ENTRYPOINT ["iotdps"]
CMD ["up"]
