"""Which Airflow line we run on, computed once.

Code that differs between Airflow 2.11 and 3.x branches on these flags; imports that merely moved
come from ``airflow.providers.common.compat`` instead, so this module stays tiny.
"""

from __future__ import annotations


def airflow_version_tuple() -> tuple[int, int, int]:
    from airflow import __version__
    from packaging.version import Version

    version = Version(__version__)
    return version.major, version.minor, version.micro


AIRFLOW_V_3_0_PLUS: bool = airflow_version_tuple() >= (3, 0, 0)
AIRFLOW_V_3_1_PLUS: bool = airflow_version_tuple() >= (3, 1, 0)
AIRFLOW_V_3_3_PLUS: bool = airflow_version_tuple() >= (3, 3, 0)

__all__ = ["AIRFLOW_V_3_0_PLUS", "AIRFLOW_V_3_1_PLUS", "AIRFLOW_V_3_3_PLUS", "airflow_version_tuple"]
