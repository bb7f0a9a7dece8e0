#!/usr/bin/env bash
# Install airflow-llm-provider from a source tree into an official Airflow image, never replacing
# the image's own Airflow. Used by the Dockerfile; tests/test_compose.py runs the `constraints` step.
#
#   install-provider.sh constraints   print the constraints file the install would use
#   install-provider.sh deps          install the provider's dependencies (cached Docker layer)
#   install-provider.sh package       install the provider itself (--no-deps) and check it
#
# Environment:
#   PROVIDER_SRC          source tree (default /opt/airflow-llm-provider)
#   PROVIDER_EXTRAS       extras to install (default ssh,celery)
#   PROVIDER_CONSTRAINTS  lock    = requirements/*.lock whose apache-airflow pin equals the image's
#                                   Airflow (the tested set); other Airflow versions fall back to
#                                   "airflow" with a warning
#                         airflow = pin only apache-airflow; keep the image's other packages
#                                   wherever they already satisfy us
#   AIRFLOW_VERSION       set by the official image; read from the installed package otherwise
set -euo pipefail

SRC="${PROVIDER_SRC:-/opt/airflow-llm-provider}"
EXTRAS="${PROVIDER_EXTRAS:-ssh,celery}"
MODE="${PROVIDER_CONSTRAINTS:-lock}"
PIN_FILE="${TMPDIR:-/tmp}/airflow-llm-provider-airflow-pin.txt"

installed_airflow() {
    python -c 'import importlib.metadata as m; print(m.version("apache-airflow"))'
}

airflow_version() {
    if [[ -n "${AIRFLOW_VERSION:-}" ]]; then
        echo "${AIRFLOW_VERSION}"
    else
        installed_airflow
    fi
}

constraints() {
    local version lock
    version="$(airflow_version)"
    case "${MODE}" in
        lock)
            for lock in "${SRC}"/requirements/*.lock; do
                if grep -qxF "apache-airflow==${version}" "${lock}"; then
                    echo "${lock}"
                    return 0
                fi
            done
            echo "WARNING: no requirements/*.lock pins apache-airflow==${version};" \
                "pinning only Airflow (untested dependency set)" >&2
            ;;
        airflow) ;;
        *)
            echo "PROVIDER_CONSTRAINTS must be 'lock' or 'airflow', not '${MODE}'" >&2
            return 2
            ;;
    esac
    echo "apache-airflow==${version}" >"${PIN_FILE}"
    echo "${PIN_FILE}"
}

pip_install() {
    local file
    file="$(constraints)"
    echo "Installing with constraints ${file} (Airflow $(airflow_version))" >&2
    pip install --no-cache-dir --disable-pip-version-check --constraint "${file}" "$@"
}

case "${1:-}" in
    constraints)
        constraints
        ;;
    deps)
        # The source tree holds a stub package at this point: this layer only changes with
        # pyproject.toml or the locks, not with the provider's code.
        # Airflow is named with its exact version too, so pip can never up- or downgrade it.
        pip_install "apache-airflow==$(airflow_version)" "${SRC}[${EXTRAS}]"
        ;;
    package)
        before="$(installed_airflow)"
        # --no-deps: nothing but the provider itself is touched.
        pip_install --no-deps --force-reinstall "${SRC}"
        after="$(installed_airflow)"
        if [[ "${before}" != "${after}" ]]; then
            echo "apache-airflow changed from ${before} to ${after}" >&2
            exit 1
        fi
        python -c 'from airflow_llm_provider.get_provider_info import get_provider_info as g
assert g()["package-name"] == "airflow-llm-provider"'
        # Informative only: the official image ships providers we do not resolve against.
        pip check || echo "WARNING: pip check reported the conflicts above" >&2
        ;;
    *)
        echo "usage: $0 constraints|deps|package" >&2
        exit 2
        ;;
esac
