"""The web page: a real `digits up` (embedded Redis, worker, watcher) serving it, read in headless Chromium
(Debian's, driven by Playwright); its token beyond 127.0.0.1; its metrics against the files processed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from service_harness import (
    DIGITS,
    STARTUP_SECONDS,
    STOP_SECONDS,
    Up,
    clean_environment,
    drop,
    result_of,
    scan_png,
    shipped_weights_folder,
)

from core import protocol
from web.metrics import exposition

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("DIGITS_SCREENSHOTS")  # a folder: the tests also save the README's screenshots there


@pytest.fixture(autouse=True)
def stop_leftovers():
    yield
    for run in Up.launched:
        if run.process.poll() is None:
            run.interrupt()
    Up.launched.clear()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is needed (make test installs it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def fetch(url: str, *, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict, str]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.MULTILINE)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def test_files_dropped_into_the_inbox_appear_on_the_status_page_and_in_the_metrics(tmp_path, browser):
    site = tmp_path / "site"
    site.mkdir()
    port = free_port()
    environment = clean_environment(DIGITS_WEIGHTS=str(shipped_weights_folder()), DIGITS_DEVICE="cpu",
                                    DIGITS_READY_DELAY="0.3", DIGITS_WORKERS="1", DIGITS_WEB_PORT=str(port))
    up = Up(site, environment)
    up.wait_for("drop scans into", timeout=60)
    assert f"status page at   http://127.0.0.1:{port}/" in up.text()

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(f"http://127.0.0.1:{port}/")
    assert page.title() == "digits — status"
    wait_until(lambda: page.text_content("#state") == "live", timeout=30, message="the page to say live")
    before = int(page.text_content("#done"))
    assert before == 0 and page.text_content("#failed") == "0"

    hostile = '<img src=x onerror="document.title=1">&amp;.png'  # a file name is shown as text, never as markup
    scans = {f"scan-{index}.png": scan_png(index)[0] for index in range(3)}
    scans[hostile] = scan_png(3)[0]
    for name, data in {**scans, "broken.png": b"not an image"}.items():
        drop(site / "inbox", name, data)
    wait_until(lambda: page.text_content("#done") == "4" and page.text_content("#failed") == "1",
               timeout=STARTUP_SECONDS, interval=0.3, message="the page's counts to reach 4 done and 1 failed")
    wait_until(lambda: hostile in page.text_content("#recent"), timeout=10, interval=0.3,
               message="the latest results to list every file")
    recent = page.text_content("#recent")
    assert all(name in recent for name in [*scans, "broken.png"])
    # The only pictures in the table are the page's own thumbnails: the name's <img> stayed text.
    assert page.evaluate("[...document.querySelectorAll('#recent img')].every(img => "
                         "img.parentElement.className === 'thumbs' && img.getAttribute('src').startsWith('api/thumbnail'))")
    assert page.title() == "digits — status"
    workers = page.text_content("#workers")
    assert "cpu" in workers.lower() and (shipped_weights_folder() / "CURRENT").read_text().strip() in workers
    wait_until(lambda: page.get_attribute("#line", "points"), timeout=30, interval=0.3, message="the chart")
    # A thumbnail of each number read, cut from the original in processed/ (the page keeps no originals).
    wait_until(lambda: page.evaluate("[...document.querySelectorAll('#recent .thumbs img')]"
                                     ".filter(img => img.complete && img.naturalWidth > 0).length") == 4,
               timeout=10, interval=0.3, message="a thumbnail of each of the four numbers")
    for source in ("../../../etc/passwd", "/etc/passwd", "broken.png"):
        assert fetch(f"http://127.0.0.1:{port}/api/thumbnail?source={urllib.request.quote(source)}&page=0&number=0"
                     )[0] == 404, source
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "web-status.png"), full_page=True)

    status, headers, text = fetch(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    wait_until(lambda: metric(fetch(f"http://127.0.0.1:{port}/metrics")[2], "digits_drop_to_result_seconds_count") == 5,
               timeout=10, interval=0.5, message="every file's drop-to-result time in the metrics")
    status, _, text = fetch(f"http://127.0.0.1:{port}/metrics")
    results = [result_of(site, name) for name in [*scans, "broken.png"]]
    flagged = sum(result["review"] for result in results)
    assert metric(text, 'digits_files_total{status="ok"}') + metric(text, 'digits_files_total{status="no_digit"}') == 4
    assert metric(text, 'digits_files_total{status="error"}') == 1
    assert metric(text, "digits_review_flagged_total") == flagged
    assert metric(text, "digits_workers_online") == 1 and metric(text, "digits_up") == 1
    assert metric(text, "digits_batch_size_sum") == metric(text, "digits_images_total") >= 4
    assert metric(text, 'digits_batch_size_bucket{le="+Inf"}') == metric(text, "digits_model_calls_total") >= 1
    assert re.search(r'^digits_model_info\{.*version="[^"]+".*\} 1\.0$', text, flags=re.MULTILINE)
    assert up.interrupt() == 0


def test_beyond_127_0_0_1_every_request_needs_the_token(tmp_path, redis_server):
    port = free_port()
    environment = clean_environment(DIGITS_BROKER_URL=redis_server.url, DIGITS_RESULTS=str(tmp_path))
    output = tmp_path / "web.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen([DIGITS, "web", "--web-host", "0.0.0.0", "--web-port", str(port)], env=environment,
                                   stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        found = wait_until(lambda: re.search(r"status page is at (http://\S+/\?token=(\S+))", output.read_text()),
                           timeout=60, message="the address with its token")
        link, token = found.group(1), found.group(2)
        assert len(token) >= 24 and output.read_text().count(token) == 1  # printed once, never logged
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/api/status", "/metrics", "/static/status.js"):
            assert fetch(base + path)[0] == 401, path
            assert fetch(base + path, headers={"Authorization": "Bearer wrong"})[0] == 401, path
            assert fetch(base + path, headers={"Authorization": f"Bearer {token}"})[0] == 200, path
        status, headers, _ = fetch(link.replace("0.0.0.0", "127.0.0.1"))
        assert status == 200
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert fetch(base + "/api/status", headers={"Cookie": cookie.split(";")[0]})[0] == 200
        assert fetch(base + "/", headers={"Authorization": f"Bearer {token}"}, method="POST")[0] == 403  # no CSRF token
        # Nothing outside the page's own files is served, however the path is written.
        for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/../pyproject.toml"):
            assert fetch(base + path, headers={"Authorization": f"Bearer {token}"})[0] == 404, path
    finally:
        process.terminate()
        assert process.wait(timeout=STOP_SECONDS) == 0


@pytest.mark.fast
def test_metrics_sum_the_workers_histograms_and_name_each_model():
    bounds = len(protocol.LATENCY_BUCKETS) + 1
    worker = {"model": "v1", "device": "CPU", "backend": "tensorflow", "images": 70, "batches": 3,
              "batch_size_buckets": [1, 0, 0, 0, 0, 1, 1, 0, 0, 0], "latency_buckets": [0, 0, 2] + [0] * (bounds - 3),
              "latency_seconds_sum": 0.07}
    report = {"error": None, "counts": {"ok": 5, "no_digit": 1, "error": 2}, "flagged": 3, "review_pending": 2,
              "reviewed": 1, "queue_depth": 4,
              "in_flight": 1, "files_waiting": 6,
              "workers": [{"node": "a@h", **worker}, {"node": "b@h", **worker, "model": "v2"}, {"node": "c@h", "error": "x"}]}
    text = exposition(report)[0].decode()
    assert metric(text, 'digits_files_total{status="error"}') == 2 and metric(text, "digits_review_pending") == 2
    assert metric(text, "digits_review_flagged_total") == 3 and metric(text, "digits_reviewed_total") == 1
    assert metric(text, "digits_workers_online") == 2 and metric(text, "digits_queue_depth") == 4
    assert metric(text, 'digits_batch_size_bucket{le="1"}') == 2 and metric(text, 'digits_batch_size_bucket{le="32"}') == 4
    assert metric(text, 'digits_batch_size_bucket{le="+Inf"}') == 6 and metric(text, "digits_batch_size_sum") == 140
    assert metric(text, 'digits_drop_to_result_seconds_bucket{le="0.05"}') == 4
    assert metric(text, "digits_drop_to_result_seconds_sum") == pytest.approx(0.14)
    assert 'digits_model_info{backend="tensorflow",device="CPU",version="v2",worker="b@h"} 1.0' in text
    assert exposition({"error": "down"})[0].decode().count("digits_up 0.0") == 1


def test_a_flagged_number_is_reviewed_with_the_keyboard_alone(tmp_path, browser):
    site = tmp_path / "site"
    site.mkdir()
    port = free_port()
    environment = clean_environment(DIGITS_WEIGHTS=str(shipped_weights_folder()), DIGITS_DEVICE="cpu",
                                    DIGITS_READY_DELAY="0.3", DIGITS_WORKERS="1", DIGITS_WEB_PORT=str(port),
                                    DIGITS_REVIEW_BELOW="1.0")  # every number is flagged
    up = Up(site, environment)
    up.wait_for("drop scans into", timeout=60)
    base = f"http://127.0.0.1:{port}"
    scans = {f"scan-{index}.png": scan_png(index) for index in range(2)}
    for name, (data, _) in scans.items():
        drop(site / "inbox", name, data)
    wait_until(lambda: all(result_of(site, name) for name in scans), timeout=STARTUP_SECONDS, interval=0.3,
               message="both results")
    for name in scans:
        assert result_of(site, name)["review"] and (site / "results" / f"{name}.review" / "0-0.png").is_file()

    page = browser.new_page(viewport={"width": 900, "height": 800})
    page.goto(base + "/")
    wait_until(lambda: page.text_content("#review_pending") == "2", timeout=10, interval=0.3,
               message="two numbers to review on the status page")
    page.goto(base + "/review")
    page.wait_for_selector("#card:not([hidden])")
    first = page.text_content("#source")
    read = result_of(site, first)["digits"]
    assert page.text_content("#digits") == read and len(page.text_content("#per_digit")) > 0
    assert page.evaluate("document.getElementById('crop').naturalWidth") > 0  # the crop, not the original
    # The keyboard alone: the correction field has the focus; Tab to the name and back.
    wrong = str((int(read) + 1) % 10)
    page.keyboard.press("Tab")
    page.keyboard.type("ana")
    page.keyboard.press("Shift+Tab")
    page.keyboard.type(wrong)
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "web-review.png"))
    page.keyboard.press("Enter")  # saves the digits typed
    wait_until(lambda: page.text_content("#source") != first, timeout=10, interval=0.2, message="the next number")
    corrected = result_of(site, first)
    assert corrected["digits"] == wrong and corrected["review"] is False
    reviewed = corrected["pages"][0]["numbers"][0]["reviewed"]
    assert reviewed["action"] == "correct" and reviewed["read"] == read and reviewed["by"] == "ana" and reviewed["at"]
    second = page.text_content("#source")
    page.keyboard.press("Enter")  # nothing typed: accepted as read
    page.wait_for_selector("#empty:not([hidden])")
    assert result_of(site, second)["review"] is False
    rows = (site / "results" / "corrections.csv").read_text().splitlines()
    assert rows[0] == "reviewed_at,source,page,number,read,digits,action,by" and len(rows) == 3
    assert rows[1].endswith(f",{first},0,0,{read},{wrong},correct,ana") and rows[2].endswith(",accept,ana")
    # Each reviewed digit is kept as a labelled 28x28 sample, for `digits train --extra RESULTS/samples`.
    samples = site / "results" / "samples"
    kept = sorted(path.relative_to(samples).parts[0] for path in samples.rglob("*.png"))
    assert kept == sorted([wrong, result_of(site, second)["digits"]])
    from PIL import Image

    assert all(Image.open(path).size == (28, 28) for path in samples.rglob("*.png"))
    page.goto(base + "/")
    wait_until(lambda: page.text_content("#review_pending") == "0", timeout=10, interval=0.3, message="0 to review")


    # A crop is served only from the results folder, whatever the item names.
    for item in ('["../../../etc/passwd",0,0]', '["scan-0.png",0,-1]', "not json", '["/etc/hosts",0,0]'):
        assert fetch(f"{base}/api/review/crop?item={urllib.request.quote(item)}")[0] == 404, item
    # Changes come only from the page itself: its CSRF token, its own origin, JSON.
    body = b'{"item": "x", "action": "accept", "digits": "", "by": "eve"}'
    for headers in ({"Content-Type": "application/json"},
                    {"Content-Type": "application/json", "X-CSRF-Token": "guess"}):
        request = urllib.request.Request(f"{base}/api/review", data=body, headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    assert up.interrupt() == 0


def test_a_forms_fields_are_reviewed_together(tmp_path, browser):
    import json

    from bench import forms

    site = tmp_path / "site"
    (site / "templates").mkdir(parents=True)
    (site / "templates" / "slip.json").write_text(json.dumps(forms.TEMPLATE))
    port = free_port()
    environment = clean_environment(DIGITS_WEIGHTS=str(shipped_weights_folder()), DIGITS_DEVICE="cpu",
                                    DIGITS_READY_DELAY="0.3", DIGITS_WORKERS="1", DIGITS_WEB_PORT=str(port),
                                    DIGITS_TEMPLATES=str(site / "templates"))
    up = Up(site, environment)
    up.wait_for("drop scans into", timeout=60)
    form = forms.forms(1, seed=7, wrong_share=1.0)[0]  # a digit written wrong: its check or sum fails
    (site / "inbox" / "slip").mkdir()
    drop(site / "inbox", "slip/a.png", form.data)
    wait_until(lambda: result_of(site, "slip/a.png"), timeout=STARTUP_SECONDS, interval=0.3, message="the form's result")
    read = result_of(site, "slip/a.png")
    assert read["review"] and (site / "results" / "slip" / "a.png.review" / "field-account.png").is_file()

    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(f"http://127.0.0.1:{port}/review")
    page.wait_for_selector("#form_view:not([hidden])")
    assert page.locator("input.field").count() == 4 and "form slip" in page.text_content("#where")
    # Each field's picture loads (waited for: the page shows before its pictures arrive).
    page.wait_for_function("[...document.querySelectorAll('#fields img')].every(img => img.complete && img.naturalWidth > 0)",
                           timeout=10_000)
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "web-review-form.png"))
    page.keyboard.type("12345674")  # the first field (the account number) has the focus, its digits selected
    page.keyboard.press("Enter")  # every field as shown
    page.wait_for_selector("#empty:not([hidden])")
    reviewed = result_of(site, "slip/a.png")
    account = reviewed["fields"]["account"]
    assert account["digits"] == "12345674" and account["valid"] and account["problems"] == []
    assert account["reviewed"]["read"] == read["fields"]["account"]["digits"] and not reviewed["review"]
    rows = (site / "results" / "corrections.csv").read_text().splitlines()[1:]
    assert [row.split(",")[3] for row in rows] == ["account", "part_a", "part_b", "total"]
    assert rows[0].endswith(",12345674,correct,anonymous")
    assert all(row.endswith(",accept,anonymous") for row in rows[1:])
    assert up.interrupt() == 0


@pytest.mark.fast
def test_a_number_is_decided_once_and_a_held_one_waits(tmp_path, redis_client):
    import json

    from web import review

    result = {"source": "a.png", "status": "ok", "digits": "7", "review": True, "sha256": "ab" * 32,
              "pages": [{"page": 0, "digits": "7", "review": True,
                         "numbers": [{"digits": "7", "confidence": 0.4, "review": True, "box": [0, 0, 9, 9],
                                      "details": [{"digit": "7", "top": [["7", 0.4], ["1", 0.3], ["2", 0.1]]}]}]}]}
    (tmp_path / "a.png.json").write_text(json.dumps(result))
    item = protocol.review_item("a.png", 0, 0)
    redis_client.zadd(protocol.REVIEW_QUEUE_KEY, {item: 0.4})
    assert [entry["item"] for entry in review.pending(redis_client, tmp_path)] == [item]
    redis_client.set(protocol.REVIEW_LOCK_PREFIX + item, "1")  # someone else is deciding it
    with pytest.raises(review.ReviewError) as held:
        review.decide(redis_client, tmp_path, item, action="correct", digits="1", by="ana", at="t1")
    assert held.value.status == 409
    redis_client.delete(protocol.REVIEW_LOCK_PREFIX + item)
    row = review.decide(redis_client, tmp_path, item, action="correct", digits="1", by="ana", at="t1")
    assert row["read"] == "7" and row["digits"] == "1"
    with pytest.raises(review.ReviewError) as again:
        review.decide(redis_client, tmp_path, item, action="accept", digits="", by="bo", at="t2")
    assert again.value.status == 409  # the first decision stands
    decided = json.loads((tmp_path / "a.png.json").read_text())
    assert decided["digits"] == "1" and not decided["review"]
    assert decided["pages"][0]["numbers"][0]["reviewed"] == {"action": "correct", "read": "7", "by": "ana", "at": "t1"}
    assert len((tmp_path / "corrections.csv").read_text().splitlines()) == 2
    assert redis_client.zcard(protocol.REVIEW_QUEUE_KEY) == 0 and review.pending(redis_client, tmp_path) == []
    for bad in ({"action": "correct", "digits": "1a"}, {"action": "delete", "digits": ""}):
        with pytest.raises(review.ReviewError):
            review.decide(redis_client, tmp_path, item, by="ana", at="t3", **bad)


@pytest.mark.fast
def test_a_taken_port_is_a_clear_error_and_beyond_loopback_a_token_is_made(tmp_path):
    import socket

    from core.errors import ConfigError
    from core.settings import Settings
    from web.main import WebServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            WebServer(Settings(results=tmp_path, web_port=port), "redis://127.0.0.1:1/0")
    server = WebServer(Settings(results=tmp_path, web_host="0.0.0.0", web_port=0), "redis://127.0.0.1:1/0")
    try:
        assert len(server.token) >= 24 and server.link == f"{server.address}?token={server.token}"
    finally:
        server.server.close()
    local = WebServer(Settings(results=tmp_path, web_port=0), "redis://127.0.0.1:1/0")
    local.server.close()
    assert local.token == "" and local.link == local.address  # 127.0.0.1: no token
