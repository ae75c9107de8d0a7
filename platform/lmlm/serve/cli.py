"""`lmlm serve`: the Ray Serve app on this machine (or the cluster RAY_ADDRESS names)."""
from __future__ import annotations


def register(subparsers) -> None:
    from lmlm.config import add_config_command

    s = add_config_command(subparsers, "serve", _serve, "serve the model over HTTP with Ray Serve (blocks until Ctrl-C)",
                           config="lmlm.serve.config:ServeConfig")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)


def _serve(args) -> int:
    from ray import serve

    from lmlm.config import load_config
    from lmlm.rayinit import init_ray

    from .app import build_app
    from .config import ServeConfig

    cfg = load_config(ServeConfig, args.config, args.overrides)
    init_ray()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(cfg), name="lmlm", route_prefix="/", blocking=True)
    return 0
