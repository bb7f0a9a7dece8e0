"""The LLM-cost page: one summary builder (``summary``), one static page (``static/``), and the two
thin web adapters that serve them (``fastapi_app`` on Airflow 3, ``flask_view`` on Airflow 2).

Nothing here is imported at plugin load: the plugin builds the app or the view only when the
api-server or the webserver asks for it, so schedulers and workers never import FastAPI or Flask.
"""

URL_PREFIX = "/llm-costs"
"""Where the page and its JSON API live on both Airflow lines."""
