"""A real tritonserver (the one bundled in nvidia-pytriton, CPU, python backend) on the generated model
repository, queried with tritonclient over HTTP and gRPC (streaming included): every answer equals the
Pipeline's on the same inputs (greedy and seeded), pieces stream one response at a time, concurrent requests
all get their own answers, the vision model is reached by BLS, refusals are errors and the server goes on.

The server's Python environment (.venv-triton: nvidia-pytriton, numpy<2, onnxruntime, tokenizers, Pillow)
is created by the fixture on first use (about a minute, downloaded by pip) and reused afterwards."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from runtime.pipeline import Pipeline
from runtime.sampling import SamplingParams
from runtime.triton.environment import ensure_environment
from runtime.triton.launch import TritonServer
from runtime.triton.repository import TritonOptions, write_repository
from serving_helpers import png_bytes, shapes_image
from tiny_engines import built_engine

QUESTION = "What colour is the shape?"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def environment():
    return ensure_environment()


@pytest.fixture(scope="module", params=["eve", "eagle2_5"])
def deployment(request, environment, tmp_path_factory):
    """(server, reference Pipeline) for a copy of the family's tiny engine with its repository."""
    engine = tmp_path_factory.mktemp(f"triton_{request.param}") / "engine"
    shutil.copytree(built_engine(request.param, tmp_path_factory)[1], engine)
    write_repository(engine, TritonOptions(max_batch=4, threads=1, max_tokens=64))
    server = TritonServer(environment, engine / "triton", log_path=engine.parent / "tritonserver.log")
    server.start()
    try:
        yield server, Pipeline(engine, max_batch=1, threads=1)
    finally:
        code = server.stop()
        assert code == 0, f"tritonserver did not shut down cleanly ({code}):\n{server.log_tail()}"


def inputs(module, question: str, images: list[bytes] = (), **scalars) -> list:
    """Request tensors with the batch dimension (the models' max_batch_size > 0)."""
    tensors = []

    def add(name, array, dtype):
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)

    add("text_input", np.array([[question.encode()]], dtype=np.object_), "BYTES")
    if images:
        add("image_input", np.array([list(images)], dtype=np.object_), "BYTES")
    kinds = {"max_tokens": (np.int32, "INT32"), "temperature": (np.float32, "FP32"), "top_p": (np.float32, "FP32"),
             "top_k": (np.int32, "INT32"), "seed": (np.int64, "INT64"), "stream": (np.bool_, "BOOL")}
    for name, value in scalars.items():
        numpy_type, triton_type = kinds[name]
        add(name, np.array([[value]], dtype=numpy_type), triton_type)
    return tensors


def text(result) -> str:
    return result.as_numpy("text_output").reshape(-1)[0].decode()


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_http_infer_equals_the_pipeline(deployment):
    server, reference = deployment
    image = png_bytes(shapes_image())
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for images in ([image], []):
            result = client.infer("aerie", inputs(httpclient, QUESTION, images, max_tokens=12))
            want = reference.run(QUESTION, [decoded(i) for i in images], SamplingParams(max_new_tokens=12))
            assert text(result) == want.text
            assert result.as_numpy("finish_reason").reshape(-1)[0].decode() == want.finish_reason
            assert int(result.as_numpy("prompt_tokens").reshape(-1)[0]) == want.prompt_tokens
            assert int(result.as_numpy("completion_tokens").reshape(-1)[0]) == len(want.token_ids)
    finally:
        client.close()


def test_grpc_infer_equals_the_pipeline_greedy_and_seeded(deployment):
    server, reference = deployment
    image = png_bytes(shapes_image((70, 50), (20, 180, 40)))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        greedy = client.infer("aerie", inputs(grpcclient, QUESTION, [image], max_tokens=10))
        assert text(greedy) == reference.generate(QUESTION, [decoded(image)], max_new_tokens=10)
        seeded = client.infer("aerie", inputs(grpcclient, QUESTION, [image], max_tokens=10, temperature=0.8,
                                              top_k=50, seed=7))
        assert text(seeded) == reference.generate(QUESTION, [decoded(image)], max_new_tokens=10, temperature=0.8,
                                                  top_k=50, seed=7)
    finally:
        client.close()


def test_grpc_stream_sends_the_answer_piece_by_piece(deployment):
    server, reference = deployment
    image = png_bytes(shapes_image())
    want = reference.run(QUESTION, [decoded(image)], SamplingParams(max_new_tokens=16))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("aerie_stream", inputs(grpcclient, QUESTION, [image], max_tokens=16),
                                  request_id="1", enable_empty_final_response=True)
        pieces, last = [], None
        while True:
            result, error = responses.get(timeout=60)
            assert error is None, error
            if result.as_numpy("text_output") is not None:
                pieces.append(text(result))
                last = result
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    assert len(pieces) > 2, "the answer did not stream"
    assert "".join(pieces) == want.text
    assert last.as_numpy("finish_reason").reshape(-1)[0].decode() == want.finish_reason
    assert int(last.as_numpy("completion_tokens").reshape(-1)[0]) == len(want.token_ids)


def test_http_generate_stream_endpoint(deployment):
    server, reference = deployment
    body = json.dumps({"text_input": QUESTION, "max_tokens": 8}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/aerie_stream/generate_stream", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [json.loads(line[len("data: "):]) for line in response.read().decode().splitlines()
                  if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == reference.generate(QUESTION, max_new_tokens=8)
    assert events[-1]["finish_reason"] in ("stop", "length")


def generate(server, model: str, body: dict, stream: bool) -> tuple[int, list[dict]]:
    """POST to Triton's HTTP generate (one JSON answer) or generate_stream (server-sent events): (status, bodies)."""
    url = f"http://{server.http_url}/v2/models/{model}/generate{'_stream' if stream else ''}"
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if not stream:
        return status, [json.loads(text)]
    return status, [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


def test_http_generate_takes_images_as_base64(deployment):
    """JSON can't carry image_input's raw bytes: the `image` input takes base64 or data: URLs (vLLM's Triton
    backend's name), one image or a list, on generate and generate_stream alike."""
    server, reference = deployment
    first = png_bytes(shapes_image((80, 60), (30, 60, 210)))
    second = png_bytes(shapes_image((60, 90), (220, 200, 20)))
    b64 = [base64.b64encode(data).decode() for data in (first, second)]
    one = reference.run(QUESTION, [decoded(first)], SamplingParams(max_new_tokens=10))
    two = reference.run(QUESTION, [decoded(first), decoded(second)], SamplingParams(max_new_tokens=10))
    for image, want in ((b64[0], one), ("data:image/png;base64," + b64[0], one), (b64, two)):
        body = {"text_input": QUESTION, "image": image, "max_tokens": 10}
        status, [answer] = generate(server, "aerie", body, stream=False)
        assert status == 200, answer
        assert (answer["text_output"], answer["prompt_tokens"]) == (want.text, want.prompt_tokens)
        status, events = generate(server, "aerie_stream", body, stream=True)
        assert status == 200, events
        assert "".join(e["text_output"] for e in events) == want.text
        assert events[-1]["finish_reason"] == want.finish_reason
    status, [answer] = generate(server, "aerie_stream", {"text_input": QUESTION, "image": b64[0], "max_tokens": 10,
                                                         "stream": False}, stream=False)
    assert (status, answer["text_output"]) == (200, one.text)


def test_http_generate_refuses_bad_base64_and_goes_on(deployment):
    server, reference = deployment
    refusals = [
        ({"image": "###"}, "image\\[0\\]: the image is not valid base64"),
        ({"image": "data:text/plain;base64,aGk="}, "image\\[0\\]: the data: URL holds 'text/plain', not an image"),
        ({"image": [base64.b64encode(png_bytes(shapes_image())).decode(), "bm90IGFuIGltYWdl"]},
         "image\\[1\\]: .*not an image"),
        ({"image_input": base64.b64encode(png_bytes(shapes_image())).decode()},
         "image_input\\[0\\]: .*base64 and data: URLs go in the `image` input"),
    ]
    for fields, message in refusals:
        for model, stream in (("aerie", False), ("aerie_stream", True)):
            status, [answer] = generate(server, model, {"text_input": QUESTION, "max_tokens": 4, **fields}, stream)
            assert status == 400 and re.search(message, answer["error"]), (model, status, answer)
    status, [answer] = generate(server, "aerie", {"text_input": QUESTION, "max_tokens": 4}, stream=False)
    assert (status, answer["text_output"]) == (200, reference.generate(QUESTION, max_new_tokens=4))


def test_concurrent_requests_all_get_their_answers(deployment):
    server, reference = deployment
    questions = ["What colour is the shape?", "How many shapes are there?", "Which bar is the highest?",
                 "What is the invoice number?", "Answer the question using a single word or phrase."]
    images = [png_bytes(shapes_image((50 + 9 * i, 70 - 5 * i), (50 * i, 90, 200 - 40 * i))) for i in range(5)]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        try:
            answers[i] = text(client.infer("aerie", inputs(httpclient, questions[i], [images[i]], max_tokens=12)))
        finally:
            client.close()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for i in range(5):
        assert answers[i] == reference.generate(questions[i], [decoded(images[i])], max_new_tokens=12), questions[i]
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics("aerie_vision")["model_stats"][0]
        assert int(stats["inference_count"]) >= 5, "the images did not go through the aerie_vision model"
    finally:
        client.close()


def test_refusals_are_invalid_argument_and_the_server_goes_on(deployment):
    """A refused request is the client's error: INVALID_ARGUMENT over gRPC, 400 over HTTP (not INTERNAL/500)."""
    server, reference = deployment
    refusals = [
        (lambda m: inputs(m, "red green blue " * 2000), "shorten the conversation"),
        (lambda m: inputs(m, QUESTION, [b"not an image"]), "not an image"),
        (lambda m: inputs(m, QUESTION, max_tokens=1000), "at most 64"),
        (lambda m: inputs(m, QUESTION, top_p=0.0), "top_p"),
        (lambda m: inputs(m, QUESTION, seed=-1), "seed must be >= 0"),
        (lambda m: inputs(m, QUESTION, temperature=float("nan")), "temperature must be a finite number"),
    ]
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        for make, message in refusals:
            with pytest.raises(InferenceServerException, match=message) as error:
                grpc.infer("aerie", make(grpcclient))
            assert error.value.status() == "StatusCode.INVALID_ARGUMENT", (message, error.value.status())
            with pytest.raises(InferenceServerException, match=message) as error:
                http.infer("aerie", make(httpclient))
            assert error.value.status() == "400", (message, error.value.status())
        assert text(grpc.infer("aerie", inputs(grpcclient, QUESTION, max_tokens=4))) == \
            reference.generate(QUESTION, max_new_tokens=4)
    finally:
        grpc.close()
        http.close()


def session_processes(session: int) -> list[int]:
    """Live processes of a session (/proc/PID/stat: state, parent, group, session after the command)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def server_pid(repository: Path) -> int | None:
    wanted = f"--model-repository={repository.resolve()}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "cmdline").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_launcher_stops_the_server_and_its_stubs_on_a_signal(signum, environment, tmp_path_factory, tmp_path):
    """SIGTERM is what systemd, `docker stop` and `timeout` send; SIGHUP a closed terminal. The old launcher
    ended and left tritonserver and its stubs serving, and its log in the temporary folder."""
    engine = tmp_path / "engine"
    shutil.copytree(built_engine("eve", tmp_path_factory)[1], engine)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "runtime", "triton", str(engine), "--launch", "--threads", "1", "--max-batch", "1",
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--env", str(environment.venv)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(temporary)})
    try:
        output: list[str] = []
        threading.Thread(target=lambda: output.extend(iter(launcher.stderr.readline, "")), daemon=True).start()
        end = time.monotonic() + 300
        while not any("tritonserver ready" in line for line in output):
            assert launcher.poll() is None and time.monotonic() < end, "".join(output)
            time.sleep(0.2)
        server = server_pid(engine / "triton")
        processes = session_processes(server)
        assert server in processes and len(processes) >= 4, processes  # the server and its python stubs
        assert list(temporary.glob("*.log")), "the server's log is in the temporary folder while it runs"
        launcher.send_signal(signum)
        assert launcher.wait(120) == 0, "".join(output)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    end = time.monotonic() + 30
    while session_processes(server):
        assert time.monotonic() < end, f"left running: {session_processes(server)}"
        time.sleep(0.2)
    assert not list(temporary.glob("*.log"))
