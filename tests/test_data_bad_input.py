"""Bad input: each case is a clear error naming file, line and column (non-zero CLI exit, no
output directory left behind), or, where a policy allows dropping, a counted drop in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from seqrec.cli import main
from seqrec.config import DataConfig
from seqrec.data.prepare import prepare
from seqrec.data.schema import DataError

HEADER = "user_id,item_id,timestamp,behavior\n"
GOOD = "".join(f"u{u},i{i},{1000 + 10 * i},view\n" for u in range(3) for i in range(4))  # lines 2..13


def events_dir(tmp_path: Path, body: str | bytes, items: str | None = None, name: str = "events.csv") -> Path:
    folder = tmp_path / "raw"
    folder.mkdir(exist_ok=True)
    path = folder / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body, encoding="utf-8")
    if items is not None:
        (folder / "items.csv").write_text(items, encoding="utf-8")
    return folder


def run_cli(folder: Path, out: Path, *overrides: str) -> int:
    return main(
        [
            "data",
            "prepare",
            "--source",
            "generic",
            "--input",
            str(folder),
            "--out",
            str(out),
            "--quiet",
            *overrides,
        ]
    )


def expect_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], folder: Path, *overrides: str) -> str:
    """The CLI fails with exit 2, one clear line, and leaves no output directory."""
    out = tmp_path / "prepared"
    assert run_cli(folder, out, *overrides) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqrec data: error:") and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]  # no temp leftovers
    return err


def dropped(tmp_path: Path, folder: Path, *overrides: str) -> dict[str, int]:
    out = tmp_path / "prepared"
    assert run_cli(folder, out, *overrides) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["raw_rows"]["events"] == report["interactions"] + report["dropped_events"]
    return report["dropped"]


def test_missing_column_names_file_and_suggests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = events_dir(tmp_path, "user,item_id,timestamp,behavior\n" + GOOD)
    err = expect_error(tmp_path, capsys, folder)
    assert "events.csv" in err and "'user_id'" in err and "did you mean 'user'" in err


def test_misnamed_column_fixed_by_mapping(tmp_path: Path) -> None:
    folder = events_dir(tmp_path, "user,item_id,timestamp,behavior\n" + GOOD)
    assert dropped(tmp_path, folder, "source.columns.user_id=user") == {}


@pytest.mark.parametrize("body,message", [(b"", "is empty"), (HEADER.encode(), "no data rows")])
def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, message: str) -> None:
    err = expect_error(tmp_path, capsys, events_dir(tmp_path, body))
    assert "events.csv" in err and message in err


def test_non_numeric_timestamp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = events_dir(tmp_path, HEADER + GOOD + "u9,i1,yesterday,view\n")
    err = expect_error(tmp_path, capsys, folder)
    assert "events.csv:14: column 'timestamp'" in err and "'yesterday'" in err
    assert dropped(tmp_path, folder, "bad_rows=drop") == {"bad_timestamp": 1}


def test_out_of_range_timestamp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = events_dir(tmp_path, HEADER + "u9,i1,-5,view\n" + GOOD + "u9,i2,99999999999,view\n")
    err = expect_error(tmp_path, capsys, folder)
    assert "events.csv:2: column 'timestamp'" in err and "outside" in err and "1 more row" in err
    assert dropped(tmp_path, folder, "bad_rows=drop") == {"timestamp_out_of_range": 2}


def test_line_numbers_count_multiline_fields_and_blank_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "user_id,item_id,timestamp,behavior,note\n" + 'u1,i1,100,view,"two\nlines"\n\nu1,i2,oops,view,x\n'
    err = expect_error(tmp_path, capsys, events_dir(tmp_path, body))
    assert "events.csv:5: column 'timestamp'" in err  # header 1, quoted field 2-3, blank 4


def test_unknown_behavior(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = events_dir(tmp_path, HEADER + GOOD + "u1,i1,2000,clik\n")
    err = expect_error(tmp_path, capsys, folder, "behaviors=[view,buy]")
    assert "events.csv:14: column 'behavior'" in err and "'clik'" in err
    assert dropped(tmp_path, folder, "behaviors=[view,buy]", "unknown_behavior=drop") == {
        "unknown_behavior": 1
    }


def test_empty_behavior_is_unknown_even_without_a_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_error(tmp_path, capsys, events_dir(tmp_path, HEADER + GOOD + "u1,i1,2000,\n"))
    assert "events.csv:14: column 'behavior'" in err and "empty behaviour" in err


def test_events_for_items_absent_from_catalogue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = "item_id,title\n" + "".join(f"i{i},thing {i}\n" for i in range(3))  # i3 is missing
    folder = events_dir(tmp_path, HEADER + GOOD, items)
    err = expect_error(tmp_path, capsys, folder, "missing_item=error")
    assert "events.csv:5: column 'item_id'" in err and "'i3'" in err and "3 event(s)" in err
    assert dropped(tmp_path, folder)["missing_item"] == 3  # default policy: drop and count
    out = tmp_path / "kept"
    assert run_cli(folder, out, "missing_item=keep") == 0
    assert json.loads((out / "report.json").read_text())["items_without_text"] == 1


def test_duplicate_rows(tmp_path: Path) -> None:
    folder = events_dir(tmp_path, HEADER + GOOD + "u1,i2,1020,view\nu1,i2,1020,view\n")
    assert dropped(tmp_path, folder) == {"duplicate": 2}
    out = tmp_path / "nodedupe"
    assert run_cli(folder, out, "dedupe=none") == 0
    assert json.loads((out / "report.json").read_text())["interactions"] == 14


def test_duplicate_catalogue_ids_are_counted(tmp_path: Path) -> None:
    items = "item_id,title\n" + "".join(f"i{i},thing {i}\n" for i in range(4)) + "i1,again\n"
    counts = dropped(tmp_path, events_dir(tmp_path, HEADER + GOOD, items))
    assert counts == {"items_duplicate_id": 1}


def test_broken_quoting_is_always_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = events_dir(tmp_path, HEADER + GOOD[:30] + 'u1,"i9,5000,view\n' + GOOD[30:])
    line = 1 + GOOD[:30].count("\n") + 1
    err = expect_error(tmp_path, capsys, folder, "bad_rows=drop")
    assert f"events.csv:{line}:" in err and "unterminated quote" in err and "quoting=false" in err


def test_stray_quotes_read_literally_with_quoting_off(tmp_path: Path) -> None:
    folder = events_dir(tmp_path, HEADER + GOOD + 'u1,"i9,5000,view\n')
    assert dropped(tmp_path, folder, "source.quoting=false") == {}


def test_non_utf8_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = (HEADER + GOOD).encode() + b"u1,caf\xe9,3000,view\n"
    folder = events_dir(tmp_path, body)
    err = expect_error(tmp_path, capsys, folder)
    assert "events.csv:14: column 'item_id'" in err and "utf-8" in err and "latin-1" in err
    assert dropped(tmp_path, folder, "bad_rows=drop") == {"invalid_encoding": 1}
    out = tmp_path / "latin"
    assert run_cli(folder, out, "source.encoding=latin-1") == 0


def test_truncated_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = events_dir(tmp_path, HEADER + GOOD + "u2,i3,40")  # cut mid-row, no final newline
    err = expect_error(tmp_path, capsys, folder)
    assert "events.csv:14:" in err and "expected 4 fields, found 3" in err and "truncated last line" in err
    assert dropped(tmp_path, folder, "bad_rows=drop") == {"malformed_row": 1}


def test_bad_jsonl_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        json.dumps({"user_id": "u1", "item_id": f"i{i}", "timestamp": 100 + i, "behavior": "view"})
        for i in range(4)
    ]
    lines.insert(2, '{"user_id": "u1", "item_id": ')
    folder = events_dir(tmp_path, "\n".join(lines) + "\n", name="events.jsonl")
    err = expect_error(tmp_path, capsys, folder)
    assert "events.jsonl:3:" in err and "not a JSON object" in err
    assert dropped(tmp_path, folder, "bad_rows=drop") == {"malformed_row": 1}


def test_every_row_bad_is_an_error_not_an_empty_output(tmp_path: Path) -> None:
    folder = events_dir(tmp_path, HEADER + "u1,i1,x,view\nu1,i2,y,view\n")
    cfg = DataConfig(bad_rows="drop")
    cfg.source.input = str(folder)
    with pytest.raises(DataError, match="no events left"):
        prepare(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_failed_overwrite_keeps_the_old_output(tmp_path: Path) -> None:
    good = events_dir(tmp_path, HEADER + GOOD)
    out = tmp_path / "prepared"
    assert run_cli(good, out) == 0
    before = (out / "events.parquet").read_bytes()
    (good / "events.csv").write_text(HEADER + GOOD + "u1,i1,x,view\n")
    assert run_cli(good, out, "--overwrite") == 2
    assert (out / "events.parquet").read_bytes() == before


def test_bad_config_value_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = expect_error(tmp_path, capsys, events_dir(tmp_path, HEADER + GOOD), "dedupe=sometimes")
    assert "data.dedupe" in err


def test_malformed_catalogue_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = "item_id,title,brand\n" + "".join(f"i{i},thing {i},B\n" for i in range(4)) + "i9,broken\n"
    folder = events_dir(tmp_path, HEADER + GOOD, items)
    err = expect_error(tmp_path, capsys, folder)
    assert "items.csv:6:" in err and "expected 3 fields, found 2" in err
    assert dropped(tmp_path, folder, "bad_rows=drop") == {"items_malformed_row": 1}


def test_bad_numeric_profile_value_is_counted_and_unknown(tmp_path: Path) -> None:
    folder = events_dir(tmp_path, HEADER + GOOD)
    (folder / "users.csv").write_text("user_id,age\nu0,30\nu1,thirty\nu2,40\n")
    counts = dropped(tmp_path, folder, "source.numeric_user_fields=[age]")
    assert counts == {"users_bad_value": 1}
    profiles = pd.read_parquet(tmp_path / "prepared" / "profiles.parquet")
    assert profiles["num__age"].tolist() == [-1.0, 0.0, 1.0]  # unknown -> the (train) mean
