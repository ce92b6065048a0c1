"""Form templates: the contract's JSON checked key by key, the check digits and sums, and fields read from
generated forms (printed labels, boxes, handwritten MNIST test digits, scans shifted and turned)."""

from __future__ import annotations

import json

import pytest

from bench import forms
from core import templates
from core.templates import TemplateError
from worker import results_files as results
from worker.fields import read_form

CONTRACT_EXAMPLE = {
    "fields": [
        {"name": "account", "box": [0.10, 0.20, 0.55, 0.28], "length": 8, "check": "luhn"},
        {"name": "part_a", "box": [0.10, 0.40, 0.40, 0.48], "length": [1, 6]},
        {"name": "part_b", "box": [0.10, 0.52, 0.40, 0.60], "length": [1, 6]},
        {"name": "total", "box": [0.10, 0.64, 0.40, 0.72], "length": [1, 7]},
    ],
    "sums": [{"total": "total", "parts": ["part_a", "part_b"]}],
}


@pytest.mark.fast
def test_the_contracts_example_is_a_template(tmp_path):
    (tmp_path / "invoice.json").write_text(json.dumps(CONTRACT_EXAMPLE))
    template = templates.load(tmp_path, "invoice")
    assert [field.name for field in template.fields] == ["account", "part_a", "part_b", "total"]
    assert template.fields[0].length == (8, 8) and template.fields[0].check == "luhn"
    assert template.fields[1].length == (1, 6) and template.fields[1].check == "none" and template.fields[1].page == 0
    assert template.sums == (("total", ("part_a", "part_b")),)


@pytest.mark.fast
@pytest.mark.parametrize("change, where, problem", [
    (lambda t: t.update(colour="red"), "key 'colour'", "unknown"),
    (lambda t: t["fields"][0].update(size=3), "fields[0] key 'size'", "unknown"),
    (lambda t: t["fields"][1].update(box=[0.5, 0.4, 0.4, 0.48]), "field 'part_a' key 'box'", "left < right"),
    (lambda t: t["fields"][1].update(box=[0.1, 0.4, 1.2, 0.48]), "field 'part_a' key 'box'", "inside the page"),
    (lambda t: t["fields"][0].update(length=0), "field 'account' key 'length'", "from 1 to"),
    (lambda t: t["fields"][0].update(length=[6, 2]), "field 'account' key 'length'", "[min, max]"),
    (lambda t: t["fields"][0].update(check="crc"), "field 'account' key 'check'", "luhn, mod11, none"),
    (lambda t: t["fields"][2].update(name="part_a"), "fields[2] key 'name'", "used twice"),
    (lambda t: t["fields"][0].update(page=-1), "field 'account' key 'page'", "page number"),
    (lambda t: t["sums"][0].update(total="grand"), "sums[0] key 'total'", "not a field"),
    (lambda t: t["sums"][0].update(parts=["part_a", "tax"]), "sums[0] key 'parts'", "this template's fields"),
    (lambda t: t.update(fields=[]), "key 'fields'", "non-empty list"),
])
def test_a_malformed_template_is_refused_naming_the_file_the_key_and_the_problem(tmp_path, change, where, problem):
    broken = json.loads(json.dumps(CONTRACT_EXAMPLE))
    change(broken)
    (tmp_path / "invoice.json").write_text(json.dumps(broken))
    with pytest.raises(TemplateError) as refused:
        templates.load(tmp_path, "invoice")
    message = str(refused.value)
    assert str(tmp_path / "invoice.json") in message and where in message and problem in message, message


@pytest.mark.fast
def test_a_template_that_is_not_json_or_missing_is_refused(tmp_path):
    (tmp_path / "bad.json").write_text("{fields: [")
    with pytest.raises(TemplateError, match="bad.json: not JSON"):
        templates.load(tmp_path, "bad")
    with pytest.raises(TemplateError, match="no such template"):
        templates.load(tmp_path, "absent")
    (tmp_path / "results.json").write_text(json.dumps(CONTRACT_EXAMPLE))  # its sheet would be results.csv
    with pytest.raises(TemplateError, match="no template name"):
        templates.load(tmp_path, "results")


@pytest.mark.fast
def test_check_digits_and_sums():
    assert templates.luhn_valid("79927398713") and not templates.luhn_valid("79927398710")
    assert templates.mod11_valid("0306406152") and not templates.mod11_valid("0306406153")
    assert forms.luhn_completed("7992739871") == "79927398713"
    template = templates.parse(CONTRACT_EXAMPLE, name="invoice", source="test")
    account, part_a = template.fields[0], template.fields[1]
    assert templates.problems_of(account, "79927398713") == ["length: 11 digits where 8 are expected"]
    assert templates.problems_of(account, "12345678") == ["check: luhn check digit does not match"]
    assert templates.problems_of(account, "12345674") == []
    assert templates.problems_of(part_a, "") == ["empty: no digits were read in the field"]
    broken = templates.sum_problems(template, {"part_a": "12", "part_b": "30", "total": "43"})
    assert set(broken) == {"total", "part_a", "part_b"}
    assert "sum: total (43) is not part_a + part_b (42)" in broken["total"]
    assert templates.sum_problems(template, {"part_a": "12", "part_b": "30", "total": "42"}) == {}
    assert templates.sum_problems(template, {"part_a": "", "part_b": "30", "total": "42"}) == {}


def _choices(digits: str, doubtful: dict[int, list[tuple[str, float]]] | None = None) -> list[list[tuple[str, float]]]:
    """Every digit read surely, but those in `doubtful` (position -> choices, likeliest first)."""
    sure = [[(digit, 0.999)] + [(str(other), 0.0001) for other in range(10) if str(other) != digit] for digit in digits]
    for position, choices in (doubtful or {}).items():
        sure[position] = choices
    return sure


@pytest.mark.fast
def test_a_failed_check_digit_or_sum_is_mended_by_the_likeliest_runner_up_that_passes():
    template = templates.parse(CONTRACT_EXAMPLE, name="invoice", source="test")
    values = {"account": "12345684", "part_a": "12", "part_b": "30", "total": "42"}  # written 12345674
    alternatives = {name: _choices(digits) for name, digits in values.items()}
    alternatives["account"][6] = [("8", 0.6), ("3", 0.3), ("7", 0.09)]
    assert templates.mend(template, values, alternatives, least=0.01) == {
        "account": ("12345674", "digit 7 read as 8 (0.6) taken as 7 (0.09)")}
    assert templates.mend(template, values, alternatives, least=0.1) == {}  # the runner-up that passes is too unlikely
    # A sum: the digit whose runner-up is likeliest among all the summed fields' digits is taken.
    values = {"account": "12345674", "part_a": "12", "part_b": "36", "total": "42"}  # part_b written 30
    alternatives = {name: _choices(digits) for name, digits in values.items()}
    alternatives["part_b"][1] = [("6", 0.7), ("0", 0.25), ("5", 0.05)]
    assert templates.mend(template, values, alternatives, least=1e-4) == {
        "part_b": ("30", "digit 2 read as 6 (0.7) taken as 0 (0.25)")}
    # A field of the wrong length is never mended, nor one whose rules already hold.
    values = {"account": "1234567", "part_a": "12", "part_b": "30", "total": "42"}
    assert templates.mend(template, values, {name: _choices(digits) for name, digits in values.items()},
                          least=1e-5) == {}


@pytest.mark.fast
@pytest.mark.parametrize("turn", [-2.5, 0.0, 1.8])
def test_a_fields_printed_box_is_found_turned_and_only_its_inside_is_read(turn):
    import math

    import numpy as np
    from PIL import Image, ImageDraw

    from worker import form_box

    page = Image.new("L", (600, 300), 235)
    draw = ImageDraw.Draw(page)
    cos, sin = math.cos(math.radians(turn)), math.sin(math.radians(turn))

    def turned(x, y):
        return 300 + (x - 300) * cos - (y - 150) * sin, 150 + (x - 300) * sin + (y - 150) * cos

    corners = [turned(x, y) for x, y in ((100, 80), (500, 80), (500, 200), (100, 200))]
    draw.line(corners + corners[:1], fill=30, width=3)
    draw.rectangle((20, 120, 80, 150), fill=40)  # a printed label left of the box
    draw.line([turned(200, 110), turned(200, 215)], fill=20, width=8)  # a stroke written over the bottom side
    draw.ellipse((300, 110, 360, 180), outline=20, width=8)  # a 0 inside
    inside = np.asarray(form_box.inside(page, (100, 80, 500, 200), 235))
    assert (inside[118:152, 18:82] == 235).all()  # the label is gone
    for x, y in [(300, 80), (300, 200), (100, 140), (500, 140)]:  # the middle of each side is gone
        column, row = (round(value) for value in turned(x, y))
        assert (inside[row - 3:row + 4, column - 3:column + 4] == 235).all(), (x, y)
    assert (inside[140:150, 302:306] < 100).all()  # the 0's stroke stays
    column, row = (round(value) for value in turned(200, 150))
    assert (inside[row, column - 2:column + 3] < 100).all()  # and the stroke, inside the box
    bare = Image.new("L", (600, 300), 235)
    ImageDraw.Draw(bare).ellipse((300, 110, 360, 180), outline=20, width=8)
    assert form_box.inside(bare, (100, 80, 500, 200), 235) is bare  # no printed box: the whole region is read


@pytest.mark.fast
def test_a_forms_sheet_row_has_a_column_per_field_then_review_and_problems(tmp_path):
    template = templates.parse(CONTRACT_EXAMPLE, name="invoice", source="test")
    sheet = results.form_sheet(tmp_path, template)
    result = {"processed_at": "2026-11-29T00:00:00Z", "source": "invoice/a.png", "review": True, "error": None,
              "fields": {"account": {"digits": "12345678", "problems": ["check: luhn check digit does not match"]},
                         "part_a": {"digits": "=1", "problems": []}, "part_b": {"digits": "", "problems": []},
                         "total": {"digits": "7", "problems": []}}}
    results.append_rows(sheet, [result])
    lines = (tmp_path / "invoice.csv").read_text().splitlines()
    assert lines[0] == "processed_at,source,account,part_a,part_b,total,review,problems"
    assert lines[1] == ("2026-11-29T00:00:00Z,invoice/a.png,12345678,'=1,,7,true,"
                        "account: check: luhn check digit does not match")
    assert results.has_row(sheet, offset=len(lines[0]) + 1, job="any", source="invoice/a.png")


def test_fields_are_read_from_their_boxes_and_a_wrong_digit_is_flagged(shipped_weights):
    from bench.accuracy import predictor

    template = templates.parse(forms.TEMPLATE, name="slip", source="bench")
    predict, _ = predictor(shipped_weights, None)
    made = forms.forms(30, seed=5)
    read = [(form, read_form(form.data, template, predict, source=form.name, model=None, review_below=0.8))
            for form in made]
    clean = [(form, result) for form, result in read if form.wrong is None]
    right = [form for form, result in clean if {name: field["digits"] for name, field in result["fields"].items()}
             == form.values]
    assert len(right) >= 0.85 * len(clean)
    for form, result in read:
        # Every digit lies within a field's printed box: no label's ink, nothing beyond the box.
        assert all(form.within_a_box(detail["box"]) for detail in result["details"]), form.name
        assert result["template"] == "slip" and list(result["fields"]) == ["account", "part_a", "part_b", "total"]
        got = {name: field["digits"] for name, field in result["fields"].items()}
        if form.wrong is not None or got != form.values:
            assert result["review"], (form.name, form.values, got)  # every wrong form is flagged for review
        for field in result["fields"].values():
            assert field["valid"] == (not field["problems"])
            assert field["review"] or field["valid"]
            if "read" in field:  # mended by a runner-up: still invalid and flagged, what was read kept
                assert not field["valid"] and field["problems"][0].startswith("mended: ") and field["read"]
        assert "_choices" not in json.dumps(result)
    assert any(form.wrong for form, _ in read)


def test_a_worker_reads_files_in_a_template_folder_as_forms(tmp_path, redis_server, shipped_weights):
    import base64

    from conftest import csv_rows
    from worker_harness import WorkerProcess, celery_client, load_result, put, serving_weights

    from core import ledger, protocol

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "slip.json").write_text(json.dumps(forms.TEMPLATE))
    (folder / "broken.json").write_text(json.dumps({"fields": [{"name": "x", "box": [0, 0, 1, 1]}]}))
    weights, _ = serving_weights(tmp_path / "weights")
    worker = WorkerProcess(tmp_path / "worker", broker_url=redis_server.url, weights=weights, name="forms",
                           extra={"DIGITS_TEMPLATES": str(folder), "DIGITS_BATCH_WAIT_MS": "20"}, use_cli=True)
    worker.start()
    try:
        worker.wait_ready()
        assert "template refused" in worker.log_text() and "broken.json: field 'x' key 'length'" in worker.log_text()
        made = forms.forms(6, seed=5, wrong_share=0.5)
        files = {f"slip/2026/{form.name}": form.data for form in made}
        files["broken/scan.png"] = made[0].data
        files["plain.png"] = made[0].data
        jobs = [put(worker.folder, relative, data) for relative, data in files.items()]
        assert all(ledger.claim(redis_server.client(), [(job["path"], job["sha256"]) for job in jobs]))
        app = celery_client(redis_server.url, "test-forms")
        app.send_task(protocol.TASK_PROCESS_FILES, kwargs={"files": jobs}, queue=protocol.QUEUE).get(timeout=180)

        rows = {row["source"]: row for row in csv_rows(worker.folder / "results" / "slip.csv")}
        assert sorted(rows) == sorted(relative for relative in files if relative.startswith("slip/"))
        for form in made:
            relative = f"slip/2026/{form.name}"
            result = load_result(worker.folder, relative)
            assert result["template"] == "slip" and set(result["fields"]) == {"account", "part_a", "part_b", "total"}
            got = {name: field["digits"] for name, field in result["fields"].items()}
            assert [rows[relative][name] for name in got] == list(got.values())
            assert rows[relative]["review"] == ("true" if result["review"] else "false")
            if form.wrong:
                assert result["review"] and rows[relative]["problems"], relative
            assert "_choices" not in (worker.folder / "results" / f"{relative}.json").read_text()
        assert load_result(worker.folder, "broken/scan.png")["status"] == "error"
        assert "TemplateError" in load_result(worker.folder, "broken/scan.png")["error"]
        assert "template" not in load_result(worker.folder, "plain.png")  # outside a template's folder: read as a page
        assert len(csv_rows(worker.folder / "results" / "results.csv")) == len(files)

        sent = app.send_task(protocol.TASK_RECOGNIZE, args=[base64.b64encode(made[1].data).decode()],
                             kwargs={"name": "sent.png", "template": "slip"}, queue=protocol.QUEUE).get(timeout=60)
        assert sent["template"] == "slip" and set(sent["fields"]) == {"account", "part_a", "part_b", "total"}
        unknown = app.send_task(protocol.TASK_RECOGNIZE, args=[base64.b64encode(made[1].data).decode()],
                                kwargs={"template": "nope"}, queue=protocol.QUEUE).get(timeout=60)
        assert unknown["status"] == "error" and "no template 'nope'" in unknown["error"]
    finally:
        worker.stop()


def test_template_check_draws_the_boxes_and_what_was_read(tmp_path):
    from conftest import run_digits

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "slip.json").write_text(json.dumps(forms.TEMPLATE))
    form = forms.forms(1, seed=5)[0]
    scan = tmp_path / "inbox" / "slip" / "2026" / "scan.png"
    scan.parent.mkdir(parents=True)
    scan.write_bytes(form.data)
    flags = ["--inbox", str(tmp_path / "inbox"), "--results", str(tmp_path / "results"),
             "--templates", str(tmp_path / "templates"), "--device", "cpu"]
    checked = run_digits("template", "check", str(scan), *flags)
    assert checked.returncode == 0, checked.stderr
    picture = tmp_path / "results" / "slip" / "2026" / "scan.png.check.png"
    assert f"picture: {picture}" in checked.stdout
    for name in ("account", "part_a", "part_b", "total"):
        assert f"  {name} " in checked.stdout
    from PIL import Image

    drawn = Image.open(picture).convert("RGB")
    assert drawn.size == Image.open(scan).size
    left, top, right, _ = (round(value * size) for value, size in zip(forms.TEMPLATE["fields"][1]["box"],
                                                                      (*drawn.size, *drawn.size)))
    from worker.fields import TEMPLATE_COLOUR

    assert drawn.getpixel(((left + right) // 2, top)) == TEMPLATE_COLOUR  # the template's box, drawn over the page

    elsewhere = tmp_path / "loose.png"
    elsewhere.write_bytes(form.data)
    refused = run_digits("template", "check", str(elsewhere), *flags)
    assert refused.returncode != 0 and "name its template with --template" in refused.stderr
    named = run_digits("template", "check", str(elsewhere), "--template", "slip", *flags)
    assert named.returncode == 0 and (tmp_path / "results" / "loose.png.check.png").is_file()
