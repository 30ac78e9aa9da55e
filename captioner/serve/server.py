"""`captioner serve`: loads the models, warms them up, binds the address and runs the app under uvicorn.

Example:
    captioner serve                                  # http://127.0.0.1:8501/ : the page; /v1/models/...: the API
    captioner serve --model runs/coco --vqa-model none --port 9000 --max-batch 32 --batch-timeout-ms 5
"""

from __future__ import annotations

import copy
import ipaddress
import json
import socket
import sys

import numpy as np

from lm.errors import UserError


def _check(a) -> None:
    if a.max_batch < 1:
        raise UserError("--max-batch must be >= 1")
    if a.batch_timeout_ms < 0:
        raise UserError("--batch-timeout-ms must be >= 0")
    if a.beam < 1:
        raise UserError("--beam must be >= 1")
    if not a.max_body > 0:
        raise UserError("--max-body must be > 0 (megabytes)")
    if not 0 <= a.port <= 65535:
        raise UserError("--port must be between 0 and 65535 (0 = any free port)")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line UserError (port taken, unknown host, no permission)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror}); use an address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
                        "(0 = any free port)") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_services(model=None, vqa_model=None, beam: int = 3, warm_up: bool = True) -> dict:
    """{"captioner": CaptionService[, "vqa": VQAService]}; vqa_model "none" leaves VQA out. With `warm_up` each model
    answers one blank image once, so the first request does not pay for the first call's setup."""
    from captioner.serve.models import CaptionService, VQAService
    services = {"captioner": CaptionService.load(model, beam_width=beam)}
    if vqa_model is None or str(vqa_model).lower() != "none":  # "none": captions only
        services["vqa"] = VQAService.load(vqa_model)
    for name, service in services.items() if warm_up else ():
        blank = np.zeros((*service.loaded.image_size, 3), np.uint8)
        service.predict([blank] if name == "captioner" else [(blank, "what is this")])
    return services


def serve_command(a) -> int:
    """Runs the server until Ctrl-C / SIGTERM (see `captioner serve --help`)."""
    _check(a)
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("captioner serve needs starlette and uvicorn: pip install 'attend-caption-lm[serve]'") from None
    from captioner.serve.app import close_app, create_app

    sock = _bind(a.host, a.port)  # first, so a taken port is reported before seconds of model loading
    try:
        services = load_services(a.model, a.vqa_model, a.beam)
    except BaseException:
        sock.close()
        raise
    app = create_app(services, max_batch=a.max_batch, batch_timeout_ms=a.batch_timeout_ms,
                     max_body=int(a.max_body * 1024 * 1024))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    models = {name: service.info()["directory"] for name, service in services.items()}
    if not _is_loopback(host):
        print(f"captioner: warning: listening on {host}, reachable from other machines; anyone who can reach it can "
              "use the models (the default --host 127.0.0.1 is local only)", file=sys.stderr)
    if a.json:
        print(json.dumps({"url": url, "host": host, "port": port, "models": models, "max_batch": a.max_batch,
                          "batch_timeout_ms": a.batch_timeout_ms, "beam": a.beam}), flush=True)
    else:
        listed = ", ".join(f"{name} ({directory})" for name, directory in models.items())
        print(f"serving {listed}\n  web page: {url}\n  REST API: {url}v1/models/captioner:predict (TF Serving "
              f"format)\n  max batch {a.max_batch}, batch timeout {a.batch_timeout_ms} ms; Ctrl-C stops", flush=True)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is for the ready line (--json)
    config = uvicorn.Config(app, log_level="info" if a.access_log else "warning", access_log=a.access_log,
                            log_config=log_config, lifespan="off", timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        close_app(app)
        sock.close()
    return 0
