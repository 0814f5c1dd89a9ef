# The mcluster package in a small image: `mcluster` is the entry point.
#   docker build -t mcluster .
#   docker run --rm mcluster --version
FROM python:3.11-slim

WORKDIR /src
# What the wheel is built from (pyproject.toml names the README and the Lua scripts).
COPY pyproject.toml README.md CHANGELOG.md ./
COPY mcluster ./mcluster
COPY lua_scripts ./lua_scripts
COPY config ./config
RUN pip install --no-cache-dir . \
    && mkdir -p /etc/mcluster \
    && cp config/mcluster.conf /etc/mcluster/mcluster.conf \
    && useradd --system --home-dir /var/lib/mcluster --create-home mcluster

USER mcluster
WORKDIR /var/lib/mcluster
ENV MCLUSTER_CONFIG=/etc/mcluster/mcluster.conf \
    MCLUSTER_STATE_DIR=/var/lib/mcluster \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["mcluster"]
CMD ["--help"]
