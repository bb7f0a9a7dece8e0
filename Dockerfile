# The official Airflow image plus airflow-llm-provider, installed from this source tree.
#
#   docker build -t airflow-llm-provider:local .
#   docker build --build-arg AIRFLOW_IMAGE=apache/airflow:2.11.2-python3.11 -t airflow-llm-provider:af2 .
#
# The image's Airflow is never replaced: dependencies are constrained by the requirements/*.lock
# that pins the same apache-airflow version (PROVIDER_CONSTRAINTS=airflow pins only Airflow and
# keeps the image's other packages). Nothing secret is baked in; docker-compose.yaml passes
# configuration at run time. See docs/docker-compose.md.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

ARG PROVIDER_EXTRAS=ssh,celery
ARG PROVIDER_CONSTRAINTS=lock
ENV PROVIDER_SRC=/opt/airflow-llm-provider

# 1. Dependencies. The package is a stub here, so this layer is rebuilt only when
#    pyproject.toml, the locks or the install script change, not on every code edit.
COPY --chown=airflow:0 pyproject.toml README.md ${PROVIDER_SRC}/
COPY --chown=airflow:0 requirements/*.lock ${PROVIDER_SRC}/requirements/
COPY --chown=airflow:0 docker/install-provider.sh ${PROVIDER_SRC}/docker/
RUN mkdir -p "${PROVIDER_SRC}/airflow_llm_provider" \
    && echo '__version__ = "0.0.0"' > "${PROVIDER_SRC}/airflow_llm_provider/__init__.py" \
    && PROVIDER_EXTRAS="${PROVIDER_EXTRAS}" PROVIDER_CONSTRAINTS="${PROVIDER_CONSTRAINTS}" \
       bash "${PROVIDER_SRC}/docker/install-provider.sh" deps

# 2. The provider's code (no dependency resolution, seconds).
COPY --chown=airflow:0 airflow_llm_provider/ ${PROVIDER_SRC}/airflow_llm_provider/
RUN PROVIDER_CONSTRAINTS="${PROVIDER_CONSTRAINTS}" \
    bash "${PROVIDER_SRC}/docker/install-provider.sh" package
