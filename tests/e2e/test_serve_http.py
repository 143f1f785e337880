"""catdog-serve over HTTP on 127.0.0.1 (extra serve): the answers predict.py writes, dynamic batching, the page and
/info, and bad inputs that get a 4xx naming their cause while the server goes on answering."""

import csv
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from catdog.exporting import export
from catdog.prediction import predict
from catdog.serving.client import Client, ServerProcess
from tests.conftest import ROOT, compose_predict, extra_marks, installed
from tests.e2e.test_export import compose_export

pytestmark = extra_marks("serve", "litserve")

#: predict.py writes 9 significant digits: half a unit in the last one, for probabilities in [0, 1].
CSV_ROUNDING = 5e-10
#: A batch of several images runs other float32 kernels than a batch of one: each logit's sum of n products may be
#: ordered otherwise, an error of at most n * 2^-24 of the sum of their magnitudes (n <= 4,608, the tiny model's
#: widest fan-in: 2.7e-4 of a sum below 1 for its logits); a 2-class softmax moves by at most 1/4 of a logit's change.
BATCHED = 1e-4


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """The tiny model behind catdog-serve with dynamic batching (up to 4 requests within 50 ms)."""
    ckpt, data = trained
    root = tmp_path_factory.mktemp("serve")
    args = [
        f"ckpt={ckpt}", "precision=32", "decoder=fast", "device=cpu", "serve.max_batch_size=4",
        "serve.batch_timeout=0.05", "serve.max_bytes=2000000", f"hydra.run.dir={root / 'log'}",
    ]  # fmt: skip
    server = ServerProcess(args, cwd=root, env=_env(), log=str(root / "server.log"))
    with server:
        yield server, ckpt, data


def _expected(ckpt, data, tmp_path) -> dict[str, float]:
    """predict.py's probability of "dog" per test image, one image per batch (as the server's unbatched requests)."""
    cfg = compose_predict(
        [f"ckpt={ckpt}", f"input={data / 'test'}", "num_workers=0", "device=cpu", "precision=32", "decoder=fast",
         "batch_size=1"], output_dir=tmp_path,
    )  # fmt: skip
    with open(predict(cfg)) as f:
        return {row[0]: float(row[1]) for row in list(csv.reader(f))[1:]}


def test_each_image_gets_what_predict_py_writes(served, tmp_path):
    server, ckpt, data = served
    expected = _expected(ckpt, data, tmp_path)
    client = Client(server.url)
    for path in sorted((data / "test").iterdir()):
        for raw in (False, True):
            status, answer = client.predict(path.read_bytes(), raw=raw)
            assert status == 200, answer
            assert abs(answer["probabilities"]["dog"] - expected[path.stem]) <= CSV_ROUNDING, (path.name, raw)
            assert answer["model"]["members"][0]["checkpoint"] == "best.ckpt"


def test_concurrent_requests_are_batched_and_answered_alike(served):
    server, _, data = served
    paths = sorted((data / "test").iterdir()) * 3
    alone = {p.name: Client(server.url).predict(p.read_bytes())[1]["probabilities"]["dog"] for p in paths[:12]}

    def send(path):
        client = Client(server.url)
        try:
            return path.name, client.predict(path.read_bytes())
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, paths))
    for name, (status, answer) in answers:
        assert status == 200
        assert abs(answer["probabilities"]["dog"] - alone[name]) <= BATCHED, name


def _bad_inputs(tmp_path) -> dict[str, tuple[bytes, int, str]]:
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(good, format="JPEG")
    jpeg = good.getvalue()
    bomb = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(bomb, format="PNG")  # 400 megapixels in about 400 KB
    big = io.BytesIO()
    Image.new("RGB", (10_000, 10_000), (90, 90, 90)).save(big, format="JPEG", quality=20)  # 100 megapixels
    return {
        "empty body": (b"", 400, "empty"),
        "text file": (b"this is not a picture of a cat\n" * 8, 415, "not an image: a text file"),
        "html page": (b"<!doctype html><html><body>404</body></html>", 415, "not an image: an HTML page"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], 422, "truncated"),
        "corrupt jpeg": (jpeg[:200] + bytes(range(256)) * 4, 422, "cannot decode image"),
        "decompression bomb": (bomb.getvalue(), 413, "decompression bomb"),
        "100 megapixels": (big.getvalue(), 413, "10000x10000 pixels"),
        "over max_bytes": (b"\xff\xd8" + os.urandom(2_100_000), 413, "serve.max_bytes=2,000,000"),
    }


def test_bad_inputs_get_a_4xx_naming_the_cause_and_the_next_request_succeeds(served, tmp_path):
    server, _, data = served
    client = Client(server.url)
    good = (data / "test" / "1.jpg").read_bytes()
    reference = client.predict(good)[1]
    table = []
    for name, (body, status, words) in _bad_inputs(tmp_path).items():
        for raw in (False, True):
            got, answer = client.predict(body, raw=raw)
            table.append((name, raw, got, answer))
            assert got == status, (name, raw, answer)
            assert words in answer["detail"], (name, raw, answer)
            assert str(tmp_path) not in answer["detail"] and "Traceback" not in answer["detail"]
            again = client.predict(good)
            assert again == (200, reference), name
    assert server.process.poll() is None


def test_bad_inputs_mixed_into_concurrent_load_leave_every_good_answer_right(served, tmp_path):
    server, _, data = served
    bad = list(_bad_inputs(tmp_path).values())[:5]  # the small ones
    paths = sorted((data / "test").iterdir())
    alone = {p.name: Client(server.url).predict(p.read_bytes())[1]["probabilities"]["dog"] for p in paths}
    jobs = [("bad", bad[i % len(bad)]) if i % 4 == 3 else ("good", paths[i % len(paths)]) for i in range(48)]

    def send(job):
        kind, item = job
        client = Client(server.url)
        try:
            return job, client.predict(item[0] if kind == "bad" else item.read_bytes())
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        for (kind, item), (status, answer) in pool.map(send, jobs):
            if kind == "bad":
                assert status == item[1], answer
            else:
                assert status == 200, answer
                assert abs(answer["probabilities"]["dog"] - alone[item.name]) <= BATCHED


def test_the_page_and_info_describe_the_model(served):
    server, ckpt, _ = served
    client = Client(server.url)
    status, page = client.get("/")
    assert status == 200 and b"<title>catdog</title>" in page and b'fetch("/predict"' in page
    assert b"http://" not in page and b"https://" not in page  # nothing fetched from elsewhere
    status, body = client.get("/info")
    info = json.loads(body)["model"]
    assert info["classes"] == ["cat", "dog"] and info["tta"] == 0 and info["image_size"] > 0
    assert info["members"][0]["metrics"]["val/logloss"] > 0
    assert client.get("/health") == (200, b"ok")


@pytest.mark.skipif(not installed("safetensors"), reason='needs safetensors: pip install -e ".[hub]"')
def test_a_hub_folder_is_served_with_the_checkpoints_answers(served, tmp_path):
    server, ckpt, data = served
    folder = export(compose_export([f"ckpt={ckpt}", "format=hub", f"output={tmp_path / 'model'}"]))
    args = [f"ckpt={folder}", "precision=32", "decoder=fast", "device=cpu", f"hydra.run.dir={tmp_path / 'log'}"]
    image = (data / "test" / "5.jpg").read_bytes()
    with ServerProcess(args, cwd=tmp_path, env=_env()) as hub_server:
        status, answer = Client(hub_server.url).predict(image)
        info = json.loads(Client(hub_server.url).get("/info")[1])["model"]
    assert info["members"][0]["metrics"]["val/logloss"] > 0  # the run's figures, from config.json
    assert status == 200
    assert answer["probabilities"] == Client(server.url).predict(image)[1]["probabilities"]
    assert answer["model"]["members"][0]["checkpoint"] == "model.safetensors"
