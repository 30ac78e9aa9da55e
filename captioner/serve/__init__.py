"""`captioner serve`: a web page and an HTTP API in TF Serving's REST dialect, with dynamic batching.

    models.py    the one adapter between the server and the models (image bytes in, JSON-ready dicts out)
    batching.py  DynamicBatcher: concurrent requests -> one model call in a worker thread
    app.py       the Starlette app: /v1/models/NAME[:predict|/metadata] and the page at /
    server.py    loading, binding 127.0.0.1 by default, running uvicorn
    static/      the web page (index.html, app.js, style.css); no CDN, nothing loaded from elsewhere

Needs the [serve] extra (starlette, uvicorn); importing this package does not import them.
"""
