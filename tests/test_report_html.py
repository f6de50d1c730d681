"""report.html in a real headless Chromium: the numbers match report.json and the reason
filter shows only the rows removed for that reason."""

import json


from test_clean import write_planted
from tunesmith.config import CleanConfig
from tunesmith.data.clean import clean_file
from tunesmith.data.report import write_clean

def test_report_page_shows_the_counts_and_filters_by_reason(tmp_path, browser):
    path, _ = write_planted(tmp_path)
    result = clean_file(path, CleanConfig(pii="report"))
    write_clean(result, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    page = browser.new_page()
    page.goto((tmp_path / "out" / "report.html").as_uri())
    assert page.inner_text("#input-rows") == str(report["input_rows"])
    assert page.inner_text("#kept") == str(report["kept"])
    assert page.inner_text("#removed") == str(report["removed"])
    assert page.inner_text("#verdict").startswith("Trainable")
    assert "PII left in the data" in page.content()
    rows = page.locator("#removed-rows tr[data-codes]")
    assert rows.count() == report["removed"]
    page.select_option("#reason-filter", "near_duplicate")
    visible = [rows.nth(i) for i in range(rows.count()) if rows.nth(i).is_visible()]
    assert len(visible) == 1 and "near_duplicate: line 5" in visible[0].inner_text()
    page.select_option("#reason-filter", "")
    assert all(rows.nth(i).is_visible() for i in range(rows.count()))


def test_a_blocked_file_says_why_and_raw_rows_cannot_run_script(tmp_path, browser):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "Say hi", "response": "Hi!"}\n'
                    '{"instruction": "<script>alert(1)</script>"\n{"instruction": "<img src=x onerror=alert(2)>"\n')
    result = clean_file(path)
    write_clean(result, tmp_path / "out")
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto((tmp_path / "out" / "report.html").as_uri())
    assert page.inner_text("#verdict").startswith("Cannot be trained on")
    assert "2 of 3 rows (67%) cannot be read" in page.inner_text("#verdict")
    assert "<script>alert(1)</script>" in page.inner_text("#removed-rows")  # shown as text
    assert dialogs == []
