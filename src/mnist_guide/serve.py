"""An HTTP server for an exported model: a drawing page at `GET /`, `GET /health`, `POST /predict` (JSON or PNG).

Every bad request gets a 4xx answer with a JSON `{"detail": ...}`; it binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import h11
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from mnist_guide import __version__
from mnist_guide.data import MNIST_SIDE, NoInkError, mnist_style
from mnist_guide.export import DeployedModel, ExportError, load_deployed
from mnist_guide.runtime import free_port

#: The largest request body accepted (1 MiB); larger ones get 413.
MAX_BODY_BYTES = 1 << 20

#: Seconds a client has to send a request's headers, and then its body (else it is dropped, or answered 408).
HEADER_DEADLINE_S = 10.0
BODY_DEADLINE_S = 10.0

#: Connections served at once; more are answered 503 at once (each costs a file descriptor).
MAX_CONNECTIONS = 4000

#: The largest PNG accepted, in pixels a side; a drawing is reduced to 28 x 28 anyway.
MAX_PNG_SIDE = 1024

#: The drawing page may load nothing but itself (its script and style are inline) and call only this server.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}

_USAGE = ('send JSON {"pixels": [[28 numbers 0-255] x 28]} (white digit on black, MNIST-style) '
          'or a PNG of one digit in the form field `file`')


class BadInput(HTTPException):
    """A request the server refuses: `BadInput(status, detail)` answers the 4xx `status` with `{"detail": detail}`."""


def _refuse_constant(name: str) -> float:
    raise BadInput(422, f"{name} is not a number a pixel can take: pixels are numbers 0-255")


def pixels_from_json(body: bytes) -> torch.Tensor:
    """Parse and check `{"pixels": [[...] x 28]}`: 28 rows of 28 numbers in [0, 255]."""
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)  # NaN and Infinity are refused as they are read
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, absurd nesting or digits
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadInput(400, f"the body is not valid JSON ({reason[:200]}); {_USAGE}") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise BadInput(422, f"expected a JSON object with the key `pixels`; {_USAGE}")
    rows = payload["pixels"]
    if not isinstance(rows, list) or len(rows) != MNIST_SIDE:
        got = f"a list of {len(rows)}" if isinstance(rows, list) else f"a {type(rows).__name__}"
        raise BadInput(422, f"`pixels` must be a list of 28 rows, got {got}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != MNIST_SIDE:
            got = f"a list of {len(row)}" if isinstance(row, list) else f"a {type(row).__name__}"
            raise BadInput(422, f"`pixels[{i}]` must be a list of 28 numbers, got {got}")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadInput(422, f"`pixels[{i}][{j}]` is {json.dumps(value)[:40]}, not a number 0-255")
            if not 0 <= value <= 255:  # 1e400 reads as infinity, outside; a huge int compares without overflow
                raise BadInput(422, f"`pixels[{i}][{j}]` is {str(value)[:40]}, outside 0-255")
    return torch.tensor(rows, dtype=torch.float32)


def pixels_from_png(data: bytes) -> torch.Tensor:
    """Decode a PNG of one digit (up to `MAX_PNG_SIDE`, grey or colour, 8 or 16 bits) into the float32 `[28, 28]`
    grey levels 0-255 the model reads, by `data.mnist_style`; the size is checked before the pixels are decoded."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    too_large = f"the largest image accepted is {MAX_PNG_SIDE} x {MAX_PNG_SIDE} pixels (scale it down first)"
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Image.DecompressionBombError:
        raise BadInput(422, f"the image is far too large: {too_large}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInput(415, f"the uploaded file is not a PNG image; {_USAGE}") from None
    if max(image.size) > MAX_PNG_SIDE:
        raise BadInput(422, f"the image is {image.size[0]} x {image.size[1]}; {too_large}")
    sixteen_bit = image.mode in ("I", "I;16", "I;16B", "I;16L")
    try:
        if image.mode not in ("L", "LA", "RGB", "RGBA") and not sixteen_bit:  # 1-bit, palette, ...
            image = image.convert("RGBA")
        array = np.asarray(image).astype(np.int32) if sixteen_bit else np.asarray(image)
    except (OSError, ValueError, SyntaxError):
        raise BadInput(422, "the PNG is damaged: its pixels cannot be decoded") from None
    try:
        return mnist_style(array, max_value=65535 if sixteen_bit else None) * 255
    except NoInkError as error:
        raise BadInput(422, str(error)) from None


class Prediction(BaseModel):
    """The answer of `POST /predict`: the digit, the ten class probabilities and the 28 x 28 grey levels read."""

    digit: int
    probabilities: list[float]
    pixels: list[list[float]]


async def _read_body(request: Request) -> bytes:
    """Read the request body, refusing (413) as soon as it passes `MAX_BODY_BYTES`."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadInput(413, f"the body is over the limit of {MAX_BODY_BYTES:,} bytes (1 MiB)")
    return bytes(body)


async def _upload_from_form(request: Request, body: bytes) -> bytes:
    """Parse a multipart body already read, and return the bytes of its `file` field."""
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as error:  # starlette raises HTTPException or MultiPartException for a bad body
        raise BadInput(400, f"the multipart body cannot be parsed ({getattr(error, 'detail', error)}); {_USAGE}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):  # missing, or text
            raise BadInput(422, f"the form has no file upload in the field `file`; {_USAGE}")
        return await upload.read()
    finally:
        await form.close()


def _classify(model: DeployedModel, lock: threading.Lock, grey_levels: torch.Tensor) -> dict:
    with lock, torch.inference_mode():  # one request at a time: on a CPU the model's own threads use every core
        logits = model((grey_levels / 255.0).view(1, 1, MNIST_SIDE, MNIST_SIDE))
    probabilities = torch.softmax(logits.float(), dim=1)[0]
    return {"digit": int(probabilities.argmax()), "probabilities": probabilities.tolist()}


def create_app(model_path: str | Path, *, trust: bool = False) -> FastAPI:
    """Build the FastAPI app serving the model file at `model_path` (any format `load_deployed` reads)."""
    deployed = load_deployed(model_path, trust=trust)
    check_contract(deployed)
    page = (resources.files("mnist_guide") / "static" / "draw.html").read_text(encoding="utf-8")
    lock = threading.Lock()
    app = FastAPI(title="mnist-guide digit reader", version=__version__, description=_USAGE,
                  docs_url=None, redoc_url=None)  # their pages load scripts from a CDN; /openapi.json stays

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def drawing_page() -> HTMLResponse:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": deployed.path.name, "format": deployed.format,
                "input": "float32 [N, 1, 28, 28] pixels in [0, 1], white digit on black", "output": "logits [N, 10]"}

    @app.post("/predict", response_model=Prediction)
    async def predict(request: Request) -> dict:
        try:
            body = await asyncio.wait_for(_read_body(request), BODY_DEADLINE_S)
        except asyncio.TimeoutError:
            raise BadInput(408, f"the body did not arrive within {BODY_DEADLINE_S:.0f} s") from None
        except ClientDisconnect:
            logging.getLogger("uvicorn.error").info("a client went away before sending its whole request")
            return Response(status_code=499)
        if not body:
            raise BadInput(400, f"the body is empty; {_USAGE}")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            upload = await _upload_from_form(request, body)
            grey_levels = await run_in_threadpool(pixels_from_png, upload)  # decoding a large PNG takes a while
        elif content_type in ("", "application/json") or content_type.endswith("+json"):
            grey_levels = pixels_from_json(body)
        else:
            raise BadInput(415, f"content type {content_type!r} is not accepted; {_USAGE}")
        answer = await run_in_threadpool(_classify, deployed, lock, grey_levels)
        return {**answer, "pixels": grey_levels.round(decimals=2).tolist()}

    return app


def check_contract(model: DeployedModel) -> None:
    """Refuse a model that does not answer a digit with ten finite logits: the server's start-up check."""
    one = torch.zeros(1, 1, MNIST_SIDE, MNIST_SIDE)
    one[..., 4:24, 13:15] = 1.0  # a plain "1"
    try:
        with torch.inference_mode():
            logits = model(one)
    except Exception as error:  # whatever fails, the model cannot serve digits
        raise ExportError(f"{model.path}: fails on a [1, 1, 28, 28] digit ({type(error).__name__}); "
                          "not an MNIST classifier") from None
    shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if shape != [1, 10]:
        raise ExportError(f"{model.path}: answers a digit with shape {shape}, not [1, 10]; not an MNIST classifier")
    if not torch.isfinite(logits).all():
        raise ExportError(f"{model.path}: answers a digit with NaN or infinite logits; export a trained model")


class _DeadlineH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers: a stalled client is dropped."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self._headers_deadline = self.loop.call_later(HEADER_DEADLINE_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._headers_deadline.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_deadline.cancel()
        super().connection_lost(exc)


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, trust: bool = False) -> None:
    """Serve the model over HTTP with uvicorn until interrupted (what `mnist-guide serve` runs); stalled clients
    are dropped, and the file descriptor limit is raised so idle connections cannot starve the server."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + 64 if hard == resource.RLIM_INFINITY else min(hard, MAX_CONNECTIONS + 64)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    uvicorn.run(create_app(model_path, trust=trust), host=host, port=port, http=_DeadlineH11,
                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=HEADER_DEADLINE_S)


def _stop_process(process: subprocess.Popen, log) -> None:
    process.terminate()  # does nothing to a process that has ended
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


@dataclass
class ServerProcess:
    """`mnist-guide serve` in a child process on a loopback port (for notebooks and tests); `stop()` ends it."""

    process: subprocess.Popen
    url: str
    log: object = field(repr=False)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _stop_process, self.process, self.log)

    @classmethod
    def start(cls, model_path: str | Path, port: int | None = None, timeout: float = 120) -> ServerProcess:
        """Start the server on 127.0.0.1 and wait until `GET /health` answers."""
        port = port or free_port()
        log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "mnist_guide.cli", "serve", "--model", str(model_path),
                   "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        server = cls(process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return server
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        message = f"the server did not answer on {server.url} within {timeout:.0f} s:\n{server.log_tail()}"
        server.stop()
        raise RuntimeError(message)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server printed (empty once stopped)."""
        if self.log.closed:
            return ""
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        self._finalizer()
