# The image examples/kubernetes runs: krea-batch installed as `make run` installs it (the
# Makefile's install-run: a venv, pip upgraded, the package from this folder), run by a user
# of its own.
#
#   docker build -t registry.example.com/krea-batch:latest .
#   docker run --rm registry.example.com/krea-batch:latest run /app/jobs.example.yaml --emulator --out /tmp/out
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md jobs.example.yaml ./
COPY examples/prompts.txt ./examples/
COPY runner ./runner
RUN python -m venv .venv \
    && .venv/bin/python -m pip install --quiet --upgrade pip \
    && .venv/bin/python -m pip install --quiet -e .
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1

# The user the Kubernetes examples name (runAsUser, fsGroup): not root.
RUN groupadd --gid 10001 krea-batch \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp krea-batch
USER 10001:10001

# Exec form: krea-batch is the container's process, so it gets the SIGTERM of a stop or an
# eviction (and drains), and its exit code is the container's.
ENTRYPOINT ["/app/.venv/bin/krea-batch"]
CMD ["--help"]
