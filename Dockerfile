# One image for both processes: `routines web` and `routines worker`.
# The worker's bubblewrap sandbox needs user namespaces: run it with a seccomp/AppArmor profile that allows them.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git bubblewrap socat ca-certificates skopeo umoci \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/routines
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir .
COPY routines ./routines
COPY app.yml ./
RUN useradd --create-home --uid 10001 routines && mkdir -p /data && chown routines /data
USER routines
ENV ROUTINES_DATA_DIR=/data ROUTINES_DIR=/srv/routines/routines HOST=0.0.0.0 PORT=8000
EXPOSE 8000
ENTRYPOINT ["routines"]
CMD ["web"]
