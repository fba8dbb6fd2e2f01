"""mnist_guide.serve: input checks, and the real server on loopback (good requests, bad input, concurrency)."""

from __future__ import annotations

import inspect
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mnist_guide import cli, export, serve
from mnist_guide.checkpoint import load_checkpoint
from mnist_guide.data import mnist_dataset, mnist_style


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 test images as uint8 `[64, 28, 28]` and their labels."""
    dataset = mnist_dataset(train=False)
    return dataset.data[:64], dataset.targets[:64]


@pytest.fixture(scope="module")
def model_file(exported_files: dict[str, Path]) -> Path:
    return exported_files["torchscript"]


@pytest.fixture(scope="module")
def expected_digits(course_checkpoint: Path, digits) -> list[int]:
    model = export.make_deployable(load_checkpoint(course_checkpoint)[0])
    with torch.inference_mode():
        return model(digits[0][:, None].float() / 255).argmax(1).tolist()


@pytest.fixture(scope="module")
def server(model_file: Path):
    """`mnist-guide serve` in a child process on a free loopback port, stopped after the module."""
    running = serve.ServerProcess.start(model_file)
    yield running
    running.stop()
    assert not running.running, "stop() ends the server process"


@pytest.fixture
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def png_bytes(image: torch.Tensor | Image.Image) -> bytes:
    if isinstance(image, torch.Tensor):
        image = Image.fromarray(image.numpy())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Checking input without a server


def test_pixels_from_json_accepts_28_rows_of_28_numbers():
    rows = [[float(j) if i % 2 else j for j in range(28)] for i in range(28)]
    grey = serve.pixels_from_json(json.dumps({"pixels": rows}).encode())
    assert grey.shape == (28, 28) and grey.dtype == torch.float32
    assert grey[1, 27] == 27


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{", 400, "not valid JSON"),
        (b"\xff\xfe{", 400, "not valid JSON"),
        (b"[" * 200_000, 400, "not valid JSON"),
        (b'{"pixels": [[' + b"9" * 5000 + b"]]}", 400, "not valid JSON"),
        (b"[1, 2]", 422, "key `pixels`"),
        (b'{"image": []}', 422, "key `pixels`"),
        (b'{"pixels": "0"}', 422, "28 rows"),
        (b'{"pixels": NaN}', 422, "NaN"),
        (b'{"pixels": [[Infinity]]}', 422, "Infinity"),
        # a huge integer among 28 x 28 numbers: once a 500, when it overflowed a float
        (json.dumps({"pixels": [[0] * 28] * 28}).replace("0", "9" * 400, 1).encode(), 422, "outside 0-255"),
    ],
)
def test_pixels_from_json_refuses_malformed_bodies(body, status, message):
    with pytest.raises(serve.BadInput, match=message) as caught:
        serve.pixels_from_json(body)
    assert caught.value.status_code == status


def test_pixels_from_png_reads_a_digit_as_mnist_style_does(digits):
    grey = serve.pixels_from_png(png_bytes(digits[0][0]))
    assert torch.equal(grey, mnist_style(digits[0][0]) * 255)
    assert (grey - digits[0][0].float()).abs().max() <= 1.5, "an MNIST digit is already in MNIST's layout"
    rgb = serve.pixels_from_png(png_bytes(Image.fromarray(digits[0][0].numpy()).convert("RGB")))
    torch.testing.assert_close(rgb, grey, atol=1e-3, rtol=0)
    large = serve.pixels_from_png(png_bytes(canvas_style(digits[0][0], "L")))
    assert large.shape == (28, 28) and distance_up_to_a_pixel(large, grey) < 0.06 * 255


def distance_up_to_a_pixel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two images, at the best of the nine shifts by at most one pixel
    (a centre of mass near a half pixel may round either way)."""
    return min(float((torch.roll(a, (dy, dx), (0, 1)) - b).abs().mean()) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def canvas_style(digit: torch.Tensor, mode: str, side: int = 280) -> Image.Image:
    """A test digit as a drawing page gives it: large, off-centre, dark ink ("L": black on white;
    "RGBA": black strokes on transparent paper, the digit in the alpha channel; "I;16": 16-bit grey)."""
    size = side * 5 // 8
    ink = F.interpolate(digit[None, None].float(), size=(size, size), mode="bilinear", antialias=True)[0, 0]
    canvas = torch.zeros(side, side)
    canvas[side // 3 : side // 3 + size, side // 12 : side // 12 + size] = ink
    canvas = canvas.round().clamp(0, 255).to(torch.uint8).numpy()
    if mode == "L":
        return Image.fromarray(255 - canvas)
    if mode == "RGBA":
        return Image.fromarray(np.stack([np.zeros_like(canvas)] * 3 + [canvas], axis=-1))
    return Image.fromarray((255 - canvas).astype(np.uint16) * 257)  # 16-bit grey, black on white


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` grey pixels but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def test_a_huge_png_is_refused_before_decoding():
    with pytest.raises(serve.BadInput, match="far too large") as caught:
        serve.pixels_from_png(png_header_only(100_000, 100_000))
    assert caught.value.status_code == 422
    with pytest.raises(serve.BadInput, match="5000 x 5000; the largest image accepted is 1024 x 1024"):
        serve.pixels_from_png(png_header_only(5000, 5000))
    with pytest.raises(serve.BadInput, match="damaged"):
        serve.pixels_from_png(png_header_only(28, 28))


def test_the_server_binds_to_loopback_by_default():
    assert inspect.signature(serve.serve).parameters["host"].default == "127.0.0.1"
    assert cli.build_parser().parse_args(["serve", "--model", "m.pt"]).host == "127.0.0.1"


def test_cli_serve_explains_a_missing_model(tmp_path, capsys):
    assert cli.main(["serve", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_server_process_reports_a_server_that_cannot_start(tmp_path):
    with pytest.raises(RuntimeError, match="exited"):
        serve.ServerProcess.start(tmp_path / "missing.pt")


# --------------------------------------------------------------------------------------------
# The real server over loopback


def test_health(client):
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "model": "mnist_cnn.pt", "format": "torchscript",
                             "input": "float32 [N, 1, 28, 28] pixels in [0, 1], white digit on black",
                             "output": "logits [N, 10]"}


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x


class _Wide(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :1000]


class _NaN(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10] * float("nan")


class _Colour(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.conv2d(x, torch.ones(10, 3, 32, 32)).flatten(1)


@pytest.mark.parametrize(("module", "message"), [(_Identity(), r"shape \[1, 1, 28, 28\]"), (_Wide(), r"shape \[1, 784\]"),
                                                 (_NaN(), "NaN"), (_Colour(), "fails on a")])
def test_a_model_that_is_not_a_digit_classifier_never_starts(tmp_path, module, message):
    path = export.save_torchscript(export.to_torchscript(module), tmp_path / "model.pt")
    with pytest.raises(export.ExportError, match=message):
        serve.create_app(path)


def test_an_onnx_model_that_answers_nan_never_starts(tmp_path):
    path = export.export_onnx(_NaN().eval(), tmp_path / "model.onnx")
    with pytest.raises(export.ExportError, match="NaN"):
        serve.create_app(path)


def test_the_server_serves_an_onnx_file_with_onnx_runtime(course_checkpoint, tmp_path, digits, expected_digits):
    path = export.export_model(load_checkpoint(course_checkpoint)[0], "onnx", tmp_path / "mnist_cnn.onnx")
    running = serve.ServerProcess.start(path)
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            assert client.get("/health").json() == {"status": "ok", "model": "mnist_cnn.onnx", "format": "onnx",
                                                    "input": "float32 [N, 1, 28, 28] pixels in [0, 1], white digit on black",
                                                    "output": "logits [N, 10]"}
            answers = [client.post("/predict", json={"pixels": image.tolist()}) for image in digits[0][:8]]
            assert [answer.status_code for answer in answers] == [200] * 8
            assert [answer.json()["digit"] for answer in answers] == expected_digits[:8]
            assert client.post("/predict", json={"pixels": [[0] * 28] * 27}).status_code == 422
    finally:
        running.stop()
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RuntimeError, match="SHA-256 differs"):
        serve.ServerProcess.start(path)


def test_a_client_that_goes_away_mid_body_is_one_log_line(server):
    import socket
    import time

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"pixels\": [[")
        time.sleep(0.3)
    time.sleep(0.5)
    log = server.log_tail(200)
    assert "went away" in log and "Traceback" not in log
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_docs_pages_that_need_a_cdn_are_off(client):
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 200


def test_stalled_and_idle_clients_are_dropped_while_health_answers(server):
    import resource
    import socket
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 1200)), hard))
    host, port = server.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(1000)]
    stalled_headers = socket.create_connection((host, int(port)), timeout=5)
    stalled_headers.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
    stalled_body = socket.create_connection((host, int(port)), timeout=5)
    stalled_body.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"pix")
    try:
        started = time.perf_counter()
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        assert time.perf_counter() - started < 1.0, "health must answer within 1 s beside 1,000 idle connections"
        stalled_body.settimeout(serve.BODY_DEADLINE_S + 10)
        assert stalled_body.recv(100).startswith(b"HTTP/1.1 408")
        stalled_headers.settimeout(serve.HEADER_DEADLINE_S + 10)
        assert stalled_headers.recv(100) == b"", "a client that never finishes its headers is disconnected"
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b"", "idle connections are closed after the same deadline"
    finally:
        for connection in (*idle, stalled_headers, stalled_body):
            connection.close()
    assert server.running


def test_predict_json_gives_the_digit_and_ten_probabilities(client, digits, expected_digits):
    for image, expected in zip(digits[0][:8], expected_digits[:8], strict=True):
        answer = client.post("/predict", json={"pixels": image.tolist()})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"digit", "probabilities", "pixels"}
        assert body["digit"] == expected
        assert torch.equal(torch.tensor(body["pixels"]), image.float()), "JSON pixels are read as they are"
        assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-4
        assert max(range(10), key=body["probabilities"].__getitem__) == expected


def test_predict_accepts_fractional_grey_levels(client, digits, expected_digits):
    answer = client.post("/predict", json={"pixels": (digits[0][0].float() * 0.999).tolist()})
    assert answer.status_code == 200 and answer.json()["digit"] == expected_digits[0]


def test_predict_png_upload(client, digits, expected_digits):
    for image, expected in zip(digits[0][:4], expected_digits[:4], strict=True):
        answer = client.post("/predict", files={"file": ("digit.png", png_bytes(image), "image/png")})
        assert answer.status_code == 200, answer.text
        assert answer.json()["digit"] == expected


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"], ids=["black on white", "RGBA", "16-bit"])
def test_predict_reads_canvas_style_pngs_of_test_digits(client, digits, mode):
    images, labels = digits[0][:24], digits[1][:24]
    for image, label in zip(images, labels, strict=True):
        drawing = canvas_style(image, mode)
        assert drawing.mode == mode and drawing.size == (280, 280)
        answer = client.post("/predict", files={"file": ("digit.png", png_bytes(drawing), "image/png")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["digit"] == label, f"{mode}: a {label} read as {body['digit']}"
        seen = torch.tensor(body["pixels"])
        assert seen.shape == (28, 28) and float(seen.max()) == 255.0
        assert distance_up_to_a_pixel(seen, image.float()) < 0.06 * 255, "the model should see about the original digit"


@pytest.mark.parametrize(
    "blank",
    [Image.new("L", (280, 280), 255), Image.new("RGBA", (280, 280)), Image.new("L", (28, 28))],
    ids=["white", "transparent", "black"],
)
def test_predict_refuses_a_blank_png(client, blank):
    answer = client.post("/predict", files={"file": ("digit.png", png_bytes(blank), "image/png")})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("no ink: ")


def test_the_drawing_page(client):
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    page = answer.text
    for part in ('<canvas id="pad"', 'id="clear"', 'id="bars"', 'id="preview"', 'fetch("predict"', "pointerdown"):
        assert part in page, f"the page has no {part}"
    assert "://" not in page, "the page must work offline: no external address"
    assert "default-src 'self'" in answer.headers["content-security-policy"], "the browser should load nothing else"


def _rows(value, rows: int = 28, columns: int = 28):
    return {"pixels": [[value] * columns for _ in range(rows)]}


BAD_REQUESTS = {
    "empty body": dict(content=b"", headers={"content-type": "application/json"}),
    "empty body, no content type": dict(content=b""),
    "not JSON": dict(content=b"pixels please", headers={"content-type": "application/json"}),
    "deeply nested JSON": dict(content=b"[" * 500_000, headers={"content-type": "application/json"}),
    "a list, not an object": dict(json=[[0] * 28] * 28),
    "no pixels key": dict(json={"image": [[0] * 28] * 28}),
    "27 rows": dict(json=_rows(0, rows=27)),
    "29 columns": dict(json=_rows(0, columns=29)),
    "flat 784": dict(json={"pixels": [0] * 784}),
    "three dimensions": dict(json={"pixels": [[[0]] * 28] * 28}),
    "a number, not rows": dict(json={"pixels": 7}),
    "strings": dict(json=_rows("12")),
    "nulls": dict(json=_rows(None)),
    "booleans": dict(json=_rows(True)),
    "NaN": dict(content=json.dumps(_rows(float("nan"))).encode(), headers={"content-type": "application/json"}),
    "Infinity": dict(content=json.dumps(_rows(float("inf"))).encode(), headers={"content-type": "application/json"}),
    "1e400": dict(content=json.dumps(_rows(0)).replace("0", "1e400").encode(), headers={"content-type": "application/json"}),
    "negative": dict(json=_rows(-1)),
    "over 255": dict(json=_rows(255.5)),
    "huge integer": dict(json=_rows(10**30)),
    "text content type": dict(content=b"0 0 0", headers={"content-type": "text/plain"}),
    "form without file": dict(data={"pixels": "0"}, files={"other": ("x.txt", b"hello", "text/plain")}),
    "file field as text": dict(data={"file": "not a file"}, files={"other": ("x.txt", b"x", "text/plain")}),
    "not an image": dict(files={"file": ("digit.png", b"this is not a PNG", "image/png")}),
    "a JPEG": dict(files={"file": ("digit.jpg", b"\xff\xd8\xff\xe0" + bytes(100), "image/jpeg")}),
    "an empty file": dict(files={"file": ("digit.png", b"", "image/png")}),
    "a PNG too large": dict(files={"file": ("digit.png", png_bytes(Image.new("L", (2000, 20))), "image/png")}),
    "a blank PNG": dict(files={"file": ("digit.png", png_bytes(Image.new("L", (64, 64))), "image/png")}),
    "a truncated PNG": dict(files={"file": ("digit.png", png_bytes(Image.new("L", (28, 28), 128))[:50], "image/png")}),
    "multipart without boundary": dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
    "over 1 MiB": dict(content=b" " * (serve.MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}),
    "over 1 MiB, chunked": dict(content=iter([b" " * 65536] * 20), headers={"content-type": "application/json"}),
    "a PNG over 1 MiB": dict(files={"file": ("digit.png", b"\x89PNG" + bytes(serve.MAX_BODY_BYTES), "image/png")}),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_with_a_json_message(client, name):
    answer = client.post("/predict", **BAD_REQUESTS[name])
    assert 400 <= answer.status_code < 500, f"{name}: {answer.status_code} {answer.text[:200]}"
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail


def test_status_codes_say_what_went_wrong(client):
    status = {name: client.post("/predict", **BAD_REQUESTS[name]).status_code
              for name in ("empty body", "not JSON", "27 rows", "NaN", "text content type", "not an image", "over 1 MiB")}
    assert status == {"empty body": 400, "not JSON": 400, "27 rows": 422, "NaN": 422,
                      "text content type": 415, "not an image": 415, "over 1 MiB": 413}


def test_wrong_method_and_path_are_4xx(client):
    assert client.get("/predict").status_code == 405
    assert client.post("/nowhere", json={}).status_code == 404


def test_the_server_survives_bad_input(server, client, digits):
    for name in ("deeply nested JSON", "over 1 MiB", "a truncated PNG"):
        client.post("/predict", **BAD_REQUESTS[name])
    assert server.running
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json={"pixels": digits[0][0].tolist()}).status_code == 200


def test_2000_requests_from_32_concurrent_clients(server, digits, expected_digits):
    payloads = [{"pixels": image.tolist()} for image in digits[0]]

    def worker(client_index: int) -> list[tuple[int, int, int | None]]:
        results = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for request_index in range(client_index, 2000, 32):
                image = request_index % len(payloads)
                answer = client.post("/predict", json=payloads[image])
                digit = answer.json().get("digit") if answer.status_code == 200 else None
                results.append((answer.status_code, image, digit))
        return results

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = [row for rows in pool.map(worker, range(32)) for row in rows]
    assert len(results) == 2000
    assert all(status == 200 for status, _, _ in results), sorted({status for status, _, _ in results})
    assert all(digit == expected_digits[image] for _, image, digit in results)
    assert server.running
