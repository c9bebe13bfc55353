"""`wb deploy`'s HTTP layer: an OpenAI-compatible app over an inference engine (swiftlike.infer's interface).

    app = create_app(engine, ServeSettings(model_name="Qwen/Qwen3-8B", max_model_len=32768))
    serve(app, bind("127.0.0.1", 8000))           # foreground, drains on SIGTERM
    with BackgroundServer(app) as server: ...     # on a thread: server.url

It knows nothing of checkpoints or flags: pipelines/deploy.py builds the engine and the settings.
"""
from .app import ServeSettings, create_app
from .errors import ApiError
from .server import BackgroundServer, bind, serve

__all__ = ["ApiError", "BackgroundServer", "ServeSettings", "bind", "create_app", "serve"]
