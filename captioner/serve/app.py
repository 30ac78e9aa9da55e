"""The ASGI app (Starlette): TF Serving's REST dialect for the captioner and VQA models, and the web page.

Routes (TF Serving's, https://www.tensorflow.org/tfx/serving/api_rest):
    GET  /v1/models/NAME[/versions/1]            model status: {"model_version_status": [{"state": "AVAILABLE"...}]}
    GET  /v1/models/NAME[/versions/1]/metadata   the signature: inputs, outputs
    POST /v1/models/NAME[/versions/1]:predict    row form {"instances": [...]} -> {"predictions": [...]},
                                                 columnar form {"inputs": ...} -> {"outputs": {...}}
    GET  /                                       the web page (static files shipped in captioner/serve/static)
NAME is "captioner" or "vqa". Binary inputs are {"b64": "<base64>"} as in TF Serving; a captioner instance may be
just {"b64": ...} (its signature has one input, "images"), a VQA instance is {"images": {"b64": ...},
"questions": "..."}. The fields of each prediction are listed in captioner.serve.models.

Errors are TF Serving's shape, {"error": "one line"}: 400 for malformed JSON, a missing or mistyped field, bytes
that are not an image, a decompression bomb, an empty question; 404 for an unknown model or route; 413 for a body
over `max_body` bytes; 503 when too many requests wait; 500 (logged, and the server keeps running) for a failure of
the model itself. Nothing in a request is ever read as a file path: images are only accepted as bytes.

Example:
    >>> from captioner.serve.models import CaptionService
    >>> app = create_app({"captioner": CaptionService.load()}, max_batch=16, batch_timeout_ms=10)
    >>> # uvicorn.run(app, host="127.0.0.1", port=8501), or use captioner.serve.server.serve
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources
import json
import logging
import os
import re
import sys

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from captioner.serve.batching import DynamicBatcher, QueueFull

DEFAULT_MAX_BODY = 20 * 1024 * 1024  # bytes
VERSION = "1"  # the one version each model has, as TF Serving numbers them

log = logging.getLogger("captioner.serve")

_PREDICT = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                      r":(?P<verb>[A-Za-z]+)$")
_STATUS = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                     r"(?P<metadata>/metadata)?/?$")

#: The web page's files, served from memory (no file-system lookups driven by the URL).
_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
# The page may load nothing from anywhere else: no CDN, no external fonts (the browser enforces this header).
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                            "style-src 'self'; script-src 'self'; connect-src 'self'",
                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class RequestError(Exception):
    """A bad request: HTTP `status` with a one-line message for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ---- request parsing (TF Serving's JSON) ---------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over `limit` bytes (from Content-Length, or
    while streaming a chunked body), so an oversized upload is never held in memory."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError("invalid Content-Length header") from None
        if declared > limit:
            raise RequestError(f"request body is {declared:,} bytes, over the {limit:,}-byte limit "
                               "(--max-body); send smaller images or fewer per request", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body is over the {limit:,}-byte limit (--max-body); send smaller images or "
                               "fewer per request", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _binary(value, where: str) -> bytes:
    """{"b64": "..."} -> bytes. A plain string is refused: it would be a path or URL, and nothing is read from disk."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        if not isinstance(value["b64"], str):
            raise RequestError(f'{where}: "b64" must be a base64 string')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f'{where}: "b64" is not valid base64') from None
    if isinstance(value, str):
        raise RequestError(f'{where}: send the image file\'s bytes as {{"b64": "<base64>"}}; '
                           "file paths and URLs are not read")
    raise RequestError(f'{where}: expected {{"b64": "<base64 of the image file>"}}, got {_kind(value)}')


def _text(value, where: str) -> str:
    """A question: a JSON string, or {"b64": ...} of UTF-8 text (TF Serving accepts either for DT_STRING)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return _binary(value, where).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{where}: the question is not UTF-8 text") from None
    raise RequestError(f"{where}: expected a question string, got {_kind(value)}")


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def parse_predict(body: bytes, service) -> tuple[list[dict], bool]:
    """A TF Serving predict request -> (instances as {input name: bytes or str}, columnar?).

    Row form: {"instances": [{"images": {"b64": ...}, "questions": "..."}, ...]}; a one-input model also takes
    {"instances": [{"b64": ...}, ...]}. Columnar form: {"inputs": {"images": [...], "questions": [...]}}; a one-input
    model also takes {"inputs": [...]}. "signature_name" may be given and must be "serving_default".
    """
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise RequestError(f"malformed JSON: {e}") from None
    if not isinstance(request, dict):
        raise RequestError(f'the body must be a JSON object with "instances" or "inputs", got {_kind(request)}')
    signature = request.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise RequestError(f'Serving signature name: "{signature}" not found in signature def '
                           '(the only signature is "serving_default")')
    unknown = sorted(set(request) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise RequestError(f'unknown field "{unknown[0]}"; a predict request has "instances" or "inputs"')
    if ("instances" in request) == ("inputs" in request):
        raise RequestError('missing field: the body needs exactly one of "instances" (rows) or "inputs" (columns)')
    names = service.inputs
    if "instances" in request:
        rows = request["instances"]
        if not isinstance(rows, list):
            raise RequestError(f'"instances" must be a list, got {_kind(rows)}')
        instances = []
        for i, row in enumerate(rows):
            if len(names) == 1 and not (isinstance(row, dict) and names[0] in row):
                row = {names[0]: row}  # the one-input shorthand: the instance is the value itself
            instances.append(_instance(row, names, f"instances[{i}]"))
        return instances, False
    columns = request["inputs"]
    if len(names) == 1 and not (isinstance(columns, dict) and names[0] in columns):
        columns = {names[0]: columns}
    if not isinstance(columns, dict):
        raise RequestError(f'"inputs" must be an object {{{", ".join(repr(n) for n in names)}: [...]}}, '
                           f"got {_kind(columns)}")
    for name in names:
        if name not in columns:
            raise RequestError(f'missing field: "inputs" has no "{name}"')
        if not isinstance(columns[name], list):
            raise RequestError(f'"inputs"."{name}" must be a list (one entry per example), got {_kind(columns[name])}')
    extra = sorted(set(columns) - set(names))
    if extra:
        raise RequestError(f'unknown input "{extra[0]}"; the {service.name} model takes {", ".join(names)}')
    lengths = {len(columns[name]) for name in names}
    if len(lengths) > 1:
        raise RequestError(f'"inputs": {" and ".join(names)} must have the same length (one {names[0][:-1]} per '
                           f"{names[-1][:-1]})")
    count = lengths.pop()
    return [_instance({n: columns[n][i] for n in names}, names, f"inputs[{i}]") for i in range(count)], True


def _instance(row, names, where: str) -> dict:
    if not isinstance(row, dict):
        raise RequestError(f"{where}: expected an object with {', '.join(names)}, got {_kind(row)}")
    for name in names:
        if name not in row:
            raise RequestError(f'missing field: {where} has no "{name}"')
    extra = sorted(set(row) - set(names))
    if extra:
        raise RequestError(f'{where}: unknown input "{extra[0]}" (inputs: {", ".join(names)})')
    return {name: (_binary(row[name], f'{where}."{name}"') if name == "images" else _text(row[name],
                                                                                          f'{where}."{name}"'))
            for name in names}


def _prepare_all(service, instances: list[dict]) -> list:
    """Decodes every instance (in a worker thread); the first bad one fails the request with 400."""
    from captioner.images import ImageError
    prepared = []
    for i, instance in enumerate(instances):
        try:
            prepared.append(service.prepare(instance))
        except ImageError as e:
            message = str(e).removeprefix("image bytes: ")
            raise RequestError(f"instance {i}: {message}") from None
        except ValueError as e:
            raise RequestError(f"instance {i}: {e}") from None
    return prepared


# ---- responses -----------------------------------------------------------------------------------------------------
def _status_body() -> dict:
    return {"model_version_status": [{"version": VERSION, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


_DTYPES = {"captions": "DT_STRING", "answers": "DT_STRING", "errors": "DT_STRING", "images": "DT_STRING",
           "questions": "DT_STRING", "scores": "DT_FLOAT", "attention": "DT_FLOAT", "lengths": "DT_INT32"}


def _metadata_body(name: str, service) -> dict:
    """TF Serving's GetModelMetadata answer for the predict signature (shapes: -1 = any)."""
    info = service.info()
    grid = [str(d) for d in info["grid"]]
    shapes = {"attention": ["-1", str(info["max_length"]), *grid] if name == "captioner" else ["-1", *grid]}

    def tensors(keys):
        return {k: {"dtype": _DTYPES[k], "tensor_shape": {"dim": [{"size": s, "name": ""}
                                                                 for s in shapes.get(k, ["-1"])],
                                                         "unknown_rank": False},
                    "name": f"serving_default_{k}:0"} for k in keys}

    signature = {"inputs": tensors(service.inputs), "outputs": tensors(service.outputs),
                 "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": name, "signature_name": "", "version": VERSION},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            "info": {k: v for k, v in info.items() if k != "directory"}}  # no server paths to clients


def _columns(predictions: list[dict], service) -> dict:
    keys = list(service.outputs) + [k for k in (predictions[0] if predictions else {}) if k not in service.outputs]
    return {k: [p.get(k) for p in predictions] for k in keys}


# ---- the app -------------------------------------------------------------------------------------------------------
def create_app(services: dict, max_batch: int = 16, batch_timeout_ms: float = 10.0,
               max_body: int = DEFAULT_MAX_BODY) -> Starlette:
    """The ASGI app serving `services` ({"captioner": CaptionService, "vqa": VQAService}, either may be absent).

    Args:
        services: model name -> service (see captioner.serve.models).
        max_batch: most instances per model call (dynamic batching).
        batch_timeout_ms: longest wait for more instances before a partial batch runs.
        max_body: largest request body in bytes; larger ones get 413.

    Returns:
        a Starlette app; `app.state.batchers` maps model names to their DynamicBatcher.
    """
    batchers = {name: DynamicBatcher(service.predict, max_batch=max_batch, timeout_s=batch_timeout_ms / 1000.0,
                                     name=name) for name, service in services.items()}

    decoders = anyio.CapacityLimiter(max(2, min(8, os.cpu_count() or 2)))

    def find(name: str, version: str | None, label: str | None):
        if name not in services or (version is not None and version != VERSION) or label is not None:
            what = f"Latest({name})" if version is None and label is None else f"{name} version {version or label}"
            known = ", ".join(sorted(services)) or "none"
            raise RequestError(f"Servable not found for request: {what} (models here: {known}; version {VERSION})",
                               404)
        return services[name]

    async def model_get(request: Request) -> Response:
        match = _STATUS.match(request.path_params["target"])
        if not match:
            if _PREDICT.match(request.path_params["target"]):
                raise RequestError(f"{request.url.path} takes POST with a JSON body, not GET", 405)
            raise RequestError(f"unknown route {request.url.path}", 404)
        service = find(match["name"], match["version"], match["label"])
        return JSONResponse(_metadata_body(match["name"], service) if match["metadata"] else _status_body())

    async def model_post(request: Request) -> Response:
        match = _PREDICT.match(request.path_params["target"])
        if not match:
            raise RequestError(f"unknown route {request.url.path}; predict is POST /v1/models/NAME:predict", 404)
        service = find(match["name"], match["version"], match["label"])
        if match["verb"] != "predict":
            raise RequestError(f'"{match["verb"]}" is not supported: these models have a predict signature only; '
                               f"POST /v1/models/{match['name']}:predict")
        body = await read_body(request, max_body)
        instances, columnar = parse_predict(body, service)
        # Decoding runs in worker threads, a few at a time: a burst of large uploads cannot decode all at once.
        prepared = await anyio.to_thread.run_sync(_prepare_all, service, instances, limiter=decoders)
        try:
            predictions = await batchers[match["name"]].submit(prepared)
        except QueueFull as e:
            raise RequestError(str(e), 503) from None
        if columnar:
            return JSONResponse({"outputs": _columns(predictions, service)})
        return JSONResponse({"predictions": predictions})

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in _STATIC:
            raise RequestError(f"unknown route {request.url.path}", 404)
        data = importlib.resources.files("captioner.serve").joinpath("static", name).read_bytes()
        return Response(data, media_type=_STATIC[name], headers=_PAGE_HEADERS)

    async def request_error(request: Request, exc: RequestError) -> Response:
        return _error(str(exc), exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.detail if isinstance(exc.detail, str) else "HTTP error", exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("error answering %s %s", request.method, request.url.path, exc_info=exc)
        message = str(exc).splitlines()[0] if str(exc) else ""
        return _error(f"internal error ({type(exc).__name__}{': ' + message if message else ''}); the server keeps "
                      "running, see its log", 500)

    app = Starlette(
        routes=[Route("/", page, methods=["GET"]), Route("/static/{name}", page, methods=["GET"]),
                Route("/v1/models/{target:path}", model_get, methods=["GET"]),
                Route("/v1/models/{target:path}", model_post, methods=["POST"])],
        exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.services, app.state.batchers, app.state.max_body = services, batchers, max_body
    return app


def close_app(app) -> None:
    """Stops the app's batchers (their worker threads)."""
    for batcher in app.state.batchers.values():
        batcher.close()


if __name__ == "__main__":  # pragma: no cover - use `captioner serve`
    print("run `captioner serve` (see captioner serve --help)", file=sys.stderr)
    sys.exit(2)
