"""The "Cascade artifacts" page: the charts, dashboards and UI snippets cascades stored with the
artifact tools (``cascades/tools/artifacts.py``, ``cascades/artifact_store.py``).

One data layer (``data``), one static page (``static/``), and two thin web adapters: a FastAPI app
on Airflow 3 (``fastapi_app``) and a Flask-AppBuilder view on Airflow 2 (``flask_view``), both at
``/cascade-artifacts``. Nothing here is imported at plugin load (see ``llm_plugin.py``).

Security boundary: artifact HTML is written by a model. It is only ever shown inside an
``<iframe sandbox="allow-scripts" srcdoc=...>`` built by the page's script: without
``allow-same-origin`` the frame has an opaque origin, so its scripts cannot reach the page, the
Airflow UI, their cookies or storage, and cannot navigate the top window, open pop-ups or submit
forms. The frame's document starts with a Content-Security-Policy that forbids every network
request. The server never serves an artifact as a document of the Airflow origin: the API answers
JSON only (``nosniff``, ``sandbox`` CSP), and the page puts titles and other fields into its own
DOM as text, never as HTML.
"""

from airflow_llm_provider.cascades.artifact_store import VIEW_URL_PREFIX

URL_PREFIX = VIEW_URL_PREFIX
"""Where the page, its JSON API and the chart libraries live on both Airflow lines."""
