"""`lmlm.serve`: the LMLM as a Ray Serve application (HTTP API over the generation engine).

    config.py    ServeConfig, the app's settings (serve/config.yaml `args`, `lmlm serve --set`)
    schemas.py   the HTTP request bodies (strict pydantic models)
    loaders.py   what each replica loads: model, tokenizer, fact store
    app.py       the FastAPI ingress deployment, `build_app(cfg, ...)` and `app_builder(args)`
    cli.py       `lmlm serve`

`serve run serve/config.yaml` imports `lmlm.serve.app:app_builder`. Importing this package is cheap:
Ray Serve and FastAPI load only with `lmlm.serve.app` (or `build_app` / `app_builder` from here).
"""
from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig", "app_builder", "build_app"]


def __getattr__(name: str):
    if name in ("build_app", "app_builder"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
