"""`captioner serve`: TF Serving's REST routes in process, dynamic batching, every bad-request path, and a real
headless Chromium against a real server process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
pytest.importorskip("httpx2", reason="httpx2 (test extra; starlette's test client) is not installed")

from starlette.testclient import TestClient  # noqa: E402

from captioner.serve.app import create_app  # noqa: E402
from captioner.serve.batching import DynamicBatcher  # noqa: E402
from captioner.serve.models import CAPTION_OUTPUTS, VQA_OUTPUTS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- shared material ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos (skimage.data: astronaut JPEG, coffee PNG, chelsea JPEG) and three synthetic scenes, as files."""
    from PIL import Image
    from skimage import data

    from captioner.scenes import generate_scenes
    folder = tmp_path_factory.mktemp("serve-images")
    paths = {}
    for name, fmt in (("astronaut", "JPEG"), ("coffee", "PNG"), ("chelsea", "JPEG")):
        paths[name] = str(folder / f"{name}.{fmt.lower()}")
        Image.fromarray(getattr(data, name)()).save(paths[name], fmt)
    generate_scenes(str(folder / "scenes"), 3, seed=20261201)
    for i in range(3):
        paths[f"scene{i}"] = str(folder / "scenes" / "images" / f"{i + 1:05d}.png")
    questions = [json.loads(line) for line in open(folder / "scenes" / "vqa.jsonl")]
    return {"paths": paths, "questions": questions}


@pytest.fixture(scope="module")
def services():
    from captioner.serve.server import load_services
    return load_services(None, None, beam=3, warm_up=False)


@pytest.fixture(scope="module")
def client(services):
    app = create_app(services, max_batch=8, batch_timeout_ms=200)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.app_state = app.state
        yield c


def b64(path_or_bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return base64.b64encode(data).decode("ascii")


# ---- routes -------------------------------------------------------------------------------------------------------
def test_status_and_metadata_as_tf_serving(client):
    for path in ("/v1/models/captioner", "/v1/models/captioner/versions/1", "/v1/models/vqa"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.json() == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                      "status": {"error_code": "OK", "error_message": ""}}]}
    for path in ("/v1/models/nope", "/v1/models/captioner/versions/2"):
        r = client.get(path)
        assert r.status_code == 404 and "Servable not found" in r.json()["error"], path
    signature = client.get("/v1/models/captioner/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert list(signature["serving_default"]["inputs"]) == ["images"]
    assert list(signature["serving_default"]["outputs"]) == list(CAPTION_OUTPUTS)
    assert "directory" not in client.get("/v1/models/captioner/metadata").json()["info"]  # no server paths
    signature = client.get("/v1/models/vqa/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert list(signature["serving_default"]["inputs"]) == ["images", "questions"]
    assert list(signature["serving_default"]["outputs"]) == list(VQA_OUTPUTS)


def test_captions_equal_the_cli_in_every_request_form(client, photos, capsys):
    """The captions (and scores) equal `captioner caption --beam 3 --json`'s, whether the images come one per
    concurrent request (batched together by the server), all in one request, or in the columnar form."""
    from captioner.cli import main
    names = ["scene0", "scene1", "scene2", "astronaut", "coffee", "chelsea"]
    files = [photos["paths"][n] for n in names]
    assert main(["caption", *files, "--beam", "3", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert len({r["caption"] for r in cli}) >= 3  # different images, different captions: mix-ups would show

    before = sum(client.app_state.batchers["captioner"].batch_sizes.values())
    single = [None] * len(files)

    def post(i):
        single[i] = client.post("/v1/models/captioner:predict", json={"instances": [{"b64": b64(files[i])}]})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = sum(client.app_state.batchers["captioner"].batch_sizes.values()) - before
    assert calls < len(files), "concurrent requests were not batched into fewer model calls"
    rows = client.post("/v1/models/captioner:predict",
                       json={"signature_name": "serving_default",
                             "instances": [{"images": {"b64": b64(f)}} for f in files]}).json()["predictions"]
    columns = client.post("/v1/models/captioner:predict",
                          json={"inputs": {"images": [{"b64": b64(f)} for f in files]}}).json()["outputs"]
    for i, expected in enumerate(cli):
        got = single[i].json()["predictions"][0]
        for p in (got, rows[i], {k: v[i] for k, v in columns.items()}):
            assert p["captions"] == expected["caption"], names[i]
            assert p["scores"] == pytest.approx(expected["score"], abs=1e-4)
            assert list(p)[:5] == list(CAPTION_OUTPUTS) and p["errors"] == ""
            assert p["lengths"] == len(expected["caption"].split())
            attention = np.array(p["attention"])  # (T, h', w'): the words' rows, the <eos> row, then zeros
            n = p["lengths"]
            assert np.allclose(attention[:n].sum(axis=(1, 2)), 1.0, atol=1e-3)
            assert not attention[n + 1:].any()


def test_vqa_answers_as_answer_questions(client, services, photos):
    from captioner.vqa import answer_questions
    image = photos["paths"]["scene0"]
    asked = [q for q in photos["questions"] if q["image"].endswith("00001.png")][:4]
    questions = [q["question"] for q in asked] + ["what colour is the zorblax"]
    r = client.post("/v1/models/vqa:predict",
                    json={"instances": [{"images": {"b64": b64(image)}, "questions": q} for q in questions]})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    expected = answer_questions(services["vqa"].loaded, image, questions)
    assert [p["answers"] for p in got] == [e["answer"] for e in expected]
    assert [p["scores"] for p in got] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    assert sum(p["answers"] == q["answer"] for p, q in zip(got, asked)) >= 3  # the bundled model is ~98% right
    assert got[-1]["unknown_words"] == expected[-1]["unknown_words"] and "zorblax" in got[-1]["unknown_words"]
    assert list(got[0])[:4] == list(VQA_OUTPUTS)
    assert np.array(got[0]["attention"]).shape == tuple(services["vqa"].loaded.model.grid[:2])
    columns = client.post("/v1/models/vqa:predict", json={"inputs": {"images": [{"b64": b64(image)}] * 2,
                                                                      "questions": questions[:2]}}).json()["outputs"]
    assert columns["answers"] == [p["answers"] for p in got[:2]]


# ---- bad requests -------------------------------------------------------------------------------------------------
def _bomb_png() -> bytes:
    """A real decompression bomb: 9000 x 9000 pixels (81 megapixels) in a ~10 kB PNG."""
    from PIL import Image
    out = io.BytesIO()
    Image.new("1", (9000, 9000)).save(out, "PNG")
    return out.getvalue()


def test_bad_requests_get_a_json_error_naming_the_problem(client, photos):
    good = b64(photos["paths"]["scene0"])
    png = open(photos["paths"]["scene1"], "rb").read()
    bomb = _bomb_png()
    assert len(bomb) < 100_000
    cases = [  # (model, body (bytes or JSON-able), status, words the error must contain)
        ("captioner", b"{not json", 400, "malformed JSON"),
        ("captioner", b"", 400, "malformed JSON"),
        ("captioner", [1, 2], 400, 'JSON object with "instances"'),
        ("captioner", {"images": []}, 400, 'unknown field "images"'),
        ("captioner", {}, 400, "missing field"),
        ("captioner", {"instances": [], "inputs": []}, 400, "exactly one of"),
        ("captioner", {"instances": {"b64": good}}, 400, '"instances" must be a list'),
        ("captioner", {"instances": [{"b64": good}, {"bytes": good}]}, 400, 'instances[1]."images": expected {"b64"'),
        ("captioner", {"instances": [{"b64": "***"}]}, 400, "not valid base64"),
        ("captioner", {"instances": [{"b64": b64(b"hello, not an image")}]}, 400, "not an image"),
        ("captioner", {"instances": [{"b64": ""}]}, 400, "empty"),
        ("captioner", {"instances": [{"b64": b64(png[: len(png) // 2])}]}, 400, "truncated"),
        ("captioner", {"instances": [{"b64": good}, {"b64": b64(bomb)}]}, 400, "instance 1: image is 9000x9000"),
        ("captioner", {"instances": [{"b64": good}], "signature_name": "other"}, 400, "signature"),
        ("captioner", {"inputs": {"images": [{"b64": good}], "extra": [1]}}, 400, 'unknown input "extra"'),
        # A path (of a real image on this disk) is never read: images are only accepted as bytes.
        ("captioner", {"instances": [photos["paths"]["scene0"]]}, 400, "file paths and URLs are not read"),
        ("captioner", {"instances": [{"images": photos["paths"]["scene0"]}]}, 400, "file paths"),
        ("vqa", {"instances": [{"images": {"b64": good}}]}, 400, 'instances[0] has no "questions"'),
        ("vqa", {"instances": [{"images": {"b64": good}, "questions": "   "}]}, 400, '"questions" has no words'),
        ("vqa", {"instances": [{"images": {"b64": good}, "questions": 3}]}, 400, "expected a question string"),
        ("vqa", {"inputs": {"images": [{"b64": good}], "questions": ["a", "b"]}}, 400, "same length"),
        ("vqa", {"inputs": {"images": [{"b64": good}]}}, 400, 'missing field: "inputs" has no "questions"'),
        ("nope", {"instances": [{"b64": good}]}, 404, "Servable not found"),
    ]
    for model, body, status, words in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = client.post(f"/v1/models/{model}:predict", content=data, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.headers["content-type"]) == (status, "application/json"), (body, r.text)
        error = r.json()["error"]
        assert words in error and "\n" not in error, (words, error)
    r = client.get("/v1/models/captioner:predict")
    assert r.status_code == 405 and "takes POST" in r.json()["error"]
    r = client.post("/v1/models/captioner:classify", json={"examples": []})
    assert r.status_code == 400 and "not supported" in r.json()["error"]
    # Nothing above broke the server: a good request is still answered.
    r = client.post("/v1/models/captioner:predict", json={"instances": [{"b64": good}]})
    assert r.status_code == 200 and r.json()["predictions"][0]["captions"]


def test_bodies_over_the_limit_get_413(services, photos):
    small = create_app(services, max_body=2000)
    big = json.dumps({"instances": [{"b64": b64(photos["paths"]["coffee"])}]}).encode()  # ~ 300 kB
    with TestClient(small) as c:
        r = c.post("/v1/models/captioner:predict", content=big)  # Content-Length says it all
        assert r.status_code == 413 and "over the 2,000-byte limit" in r.json()["error"]

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for i in range(0, len(big), 500):
                yield big[i: i + 500]

        r = c.post("/v1/models/captioner:predict", content=chunks())
        assert r.status_code == 413 and "--max-body" in r.json()["error"]
        r = c.post("/v1/models/captioner:predict",
                   json={"instances": [{"b64": b64(open(photos["paths"]["scene0"], "rb").read()[:100])}]})
        assert r.status_code == 400  # under the limit: read and judged (a truncated image)


def test_the_page_is_offline_and_static_files_are_a_fixed_list(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        text = client.get(f"/static/{name}").text
        assert "http://" not in text and "https://" not in text and "@import" not in text
    assert "http" not in r.text.replace("http-equiv", "")  # no CDN, no external fonts or scripts
    for path in ("/static/../models.py", "/static/..%2fmodels.py", "/static/models.py", "/static/",
                 "/etc/passwd"):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path


def test_a_failing_model_gets_500_and_the_server_keeps_serving():
    class Flaky:  # a stand-in whose first batch fails, as a model can (out of memory, a backend error)
        name, inputs, outputs = "captioner", ("images",), CAPTION_OUTPUTS
        calls = 0

        def prepare(self, instance):
            return instance["images"]

        def predict(self, batch):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise MemoryError("backend ran out of memory")
            return [{"captions": "ok"} for _ in batch]

    with TestClient(create_app({"captioner": Flaky()}), raise_server_exceptions=False) as c:
        body = {"instances": [{"b64": b64(b"x")}]}
        r = c.post("/v1/models/captioner:predict", json=body)
        assert r.status_code == 500 and "MemoryError" in r.json()["error"] and "keeps running" in r.json()["error"]
        r = c.post("/v1/models/captioner:predict", json=body)
        assert r.status_code == 200 and r.json()["predictions"] == [{"captions": "ok"}]


# ---- batching -----------------------------------------------------------------------------------------------------
def test_dynamic_batcher_gathers_runs_off_the_loop_and_answers_each_caller():
    loop_thread, calls, ticks = [], [], [0]

    def fn(items):  # a slow "model": records its batch, its thread, and how often the event loop ticked meanwhile
        before = ticks[0]
        time.sleep(0.2)
        calls.append((list(items), threading.get_ident(), ticks[0] - before))
        if "boom" in items:
            raise RuntimeError("model failed")
        return [f"<{x}>" for x in items]

    async def main():
        loop_thread.append(threading.get_ident())
        batcher = DynamicBatcher(fn, max_batch=4, timeout_s=0.05)

        async def ticker():  # runs only while the event loop is free
            while True:
                await asyncio.sleep(0.005)
                ticks[0] += 1

        tick = asyncio.ensure_future(ticker())
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(9)), batcher.submit(["a", "b"]))
        lone_start = time.perf_counter()
        lone = await batcher.submit(["x"])
        lone_seconds = time.perf_counter() - lone_start
        failed = await asyncio.gather(batcher.submit(["boom"]), batcher.submit(["c"]), return_exceptions=True)
        after = await batcher.submit(["d"])
        tick.cancel()
        batcher.close()
        return results, lone, lone_seconds, failed, after, batcher.batch_sizes

    results, lone, lone_seconds, failed, after, sizes = asyncio.run(main())
    assert results == [[f"<{i}>"] for i in range(9)] + [["<a>", "<b>"]]  # each caller gets its own results
    assert [len(items) for items, _, _ in calls[:3]] == [4, 4, 3]  # 11 items, batches of at most 4
    assert all(thread != loop_thread[0] for _, thread, _ in calls)  # the model never ran on the loop's thread
    assert all(during >= 3 for _, _, during in calls)  # and the loop kept running while the model worked
    assert lone == ["<x>"] and 0.2 <= lone_seconds < 3.0  # a lone item waits the timeout, not for a full batch
    assert isinstance(failed[0], RuntimeError) and isinstance(failed[1], RuntimeError)  # same batch, same error
    assert after == ["<d>"] and sizes[4] == 2  # and the next batch works


# ---- the command line ---------------------------------------------------------------------------------------------
def test_serve_flags_errors_and_help(capsys):
    from captioner.cli import build_parser, main
    import socket
    for argv, words in ((["--max-batch", "0"], "--max-batch must be >= 1"),
                        (["--batch-timeout-ms", "-1"], "--batch-timeout-ms"),
                        (["--port", "70000"], "--port must be between"),
                        (["--max-body", "0"], "--max-body")):
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("captioner: error: ") and words in err and "\n" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
        err = capsys.readouterr().err.strip()
        assert "cannot listen on 127.0.0.1" in err and "--port" in err and "\n" not in err
    sub = build_parser()._subparsers._group_actions[0].choices["serve"]
    for action in sub._actions:
        if action.option_strings and action.dest not in ("help", "access_log", "json"):
            assert "default" in action.help, action.dest
    assert sub.get_default("host") == "127.0.0.1" and sub.get_default("max_body") == 20


# ---- a real browser against a real server process ----------------------------------------------------------------
@pytest.fixture(scope="module")
def live_server():
    """`captioner serve --port 0 --json` as a child process on 127.0.0.1; yields its URL."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "captioner.cli", "serve", "--port", "0", "--json"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the ready line, once models are loaded and warmed up
        if not line:
            pytest.fail(f"captioner serve did not start: {proc.stderr.read()[-2000:]}")
        ready = json.loads(line)
        assert ready["host"] == "127.0.0.1"
        yield ready["url"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _chromium():
    """A headless Chromium driven by Debian's chromedriver, or a skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium (test extra) is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("chromium and chromium-driver are not installed and could not be (scripts/test.sh installs "
                    "them with apt-get when it runs as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _api(url: str, model: str, instance: dict) -> dict:
    import urllib.request
    request = urllib.request.Request(f"{url}v1/models/{model}:predict", data=json.dumps(
        {"instances": [instance]}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)["predictions"][0]


def test_browser_uploads_a_scene_reads_caption_and_answer(live_server, photos, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    scene = photos["paths"]["scene0"]
    asked = next(q for q in photos["questions"] if q["image"].endswith("00001.png"))
    expected = _api(live_server, "captioner", {"b64": b64(scene)})
    answer = _api(live_server, "vqa", {"images": {"b64": b64(scene)}, "questions": asked["question"]})
    driver = _chromium()
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(live_server)
        wait.until(lambda d: "captioner:" in d.find_element(By.ID, "models").text)
        driver.find_element(By.ID, "file").send_keys(scene)
        wait.until(lambda d: d.execute_script("return document.body.dataset.captioned") == "yes")
        caption = driver.find_element(By.ID, "caption").text.strip()
        assert caption == expected["captions"] and caption  # the page shows the server's (= the CLI's) caption

        canvas = driver.find_element(By.ID, "caption-canvas")
        plain = driver.execute_script("return arguments[0].toDataURL()", canvas)
        words = driver.find_elements(By.CSS_SELECTOR, "#caption .word")
        assert [w.text for w in words] == caption.split()
        ActionChains(driver).move_to_element(words[-1]).perform()  # hover: that word's attention over the image
        assert "active" in words[-1].get_attribute("class")
        hovered = driver.execute_script("return arguments[0].toDataURL()", canvas)
        assert hovered != plain
        words[2].click()  # click keeps a word's map after the pointer leaves
        ActionChains(driver).move_to_element(driver.find_element(By.ID, "question")).perform()
        assert "active" in words[2].get_attribute("class")

        driver.find_element(By.ID, "question").send_keys(asked["question"])
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_element(By.ID, "answer").text not in ("", "\u2026"))
        shown = driver.find_element(By.ID, "answer").text
        assert shown == answer["answers"] == asked["answer"], (shown, answer["answers"], asked)
        ood = driver.find_element(By.ID, "ood")
        assert ood.is_displayed() == bool(expected.get("out_of_domain", False))
        shot = os.environ.get("CAPTIONER_SCREENSHOT_DIR") or str(tmp_path)
        os.makedirs(shot, exist_ok=True)
        assert driver.save_screenshot(os.path.join(shot, "serve-scene.png"))

        # Everything the page loaded came from the server itself (no CDN, no fonts from elsewhere).
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(name.startswith(live_server) for name in loaded), loaded

        # A real photo: captioned; the out-of-domain warning shows exactly when the model says so.
        photo = _api(live_server, "captioner", {"b64": b64(photos["paths"]["astronaut"])})
        driver.find_element(By.ID, "file").send_keys(photos["paths"]["astronaut"])
        wait.until(lambda d: d.execute_script("return document.body.dataset.captioned") == "yes")
        assert driver.find_element(By.ID, "caption").text.strip() == photo["captions"]
        assert ood.is_displayed() == bool(photo.get("out_of_domain", False))
        driver.save_screenshot(os.path.join(shot, "serve-astronaut.png"))

        # Not an image: the page shows the server's one-line error.
        text_file = tmp_path / "notes.txt"
        text_file.write_text("not a picture")
        driver.find_element(By.ID, "file").send_keys(str(text_file))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "not an image" in driver.find_element(By.ID, "error").text
    finally:
        driver.quit()
