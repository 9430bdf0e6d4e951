# saltchat-relay: forwards end-to-end encrypted frames it cannot read.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY chat ./chat
COPY server ./server
RUN pip install --no-cache-dir ".[redis]" \
    && useradd --system --home-dir /data relay \
    && mkdir -p /data \
    && chown relay /data

USER relay
VOLUME /data
EXPOSE 8765
STOPSIGNAL SIGTERM
CMD ["saltchat-relay", "--host", "0.0.0.0", "--port", "8765", "--data-dir", "/data"]
