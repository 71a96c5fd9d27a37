"""`--overwrite` never destroys user data; data mistakes end in one line that says what to set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.cli import main
from seqrec.config import TextConfig
from seqrec.data.render import Renderer


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "D"
    assert main(["data", "synth", "--out", str(out), "--users", "40", "--items", "30", "--quiet"]) == 0
    return out


def _prepare(inp: Path, out: Path, *extra: str) -> int:
    return main(["data", "prepare", "--input", str(inp), "--out", str(out), "--overwrite", "--quiet", *extra])


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_overwrite_never_deletes_the_input_or_a_folder_holding_it(synth_dir, tmp_path, capsys):
    raw = synth_dir / "raw"
    before = sorted(p.name for p in raw.iterdir())
    assert _prepare(raw, synth_dir) == 2  # --out contains the input (the reproduction)
    _one_line(capsys, "contains the input", "choose another --out")
    assert _prepare(raw, synth_dir.parent) == 2  # the input's grandparent
    _one_line(capsys, "contains the input")
    assert _prepare(raw, raw) == 2  # the input itself
    _one_line(capsys, "is the input")
    events = raw / before[0]
    assert _prepare(events, events) == 2  # the events file itself
    assert sorted(p.name for p in raw.iterdir()) == before


def test_overwrite_refuses_unrelated_folders_and_files(synth_dir, tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    assert _prepare(synth_dir / "raw", project) == 2
    _one_line(capsys, "is not a seqrec prepared data set", "seqrec_prepared.json")
    assert (project / "notes.txt").read_text() == "mine"
    single = tmp_path / "file.txt"
    single.write_text("mine")
    assert _prepare(synth_dir / "raw", single) == 2
    _one_line(capsys, "is a file")
    assert main(["data", "synth", "--out", str(project), "--users", "20", "--overwrite", "--quiet"]) == 2
    _one_line(capsys, "is not a seqrec prepared data set")
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]
    # synth at scale (--events) is guarded the same way, before it generates anything
    assert main(["data", "synth", "--out", str(project), "--events", "500", "--overwrite", "--quiet"]) == 2
    _one_line(capsys, "is not a seqrec prepared data set")
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_an_earlier_prepared_data_set(synth_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert _prepare(synth_dir / "raw", out) == 0
    assert (out / "seqrec_prepared.json").is_file()
    (out / "stale.txt").write_text("old run")
    assert _prepare(synth_dir / "raw", out, "min_user_events=3") == 0
    assert not (out / "stale.txt").exists() and (out / "events.parquet").is_file()


def test_tab_separated_csv_and_missing_behavior_column_say_what_to_set(tmp_path, capsys):
    rows = [("u1", "i1", 1_600_000_000 + i, "view") for i in range(3)]
    tab = tmp_path / "log.csv"
    tab.write_text(
        "user_id\titem_id\ttimestamp\tbehavior\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)
    )
    assert main(["data", "prepare", "--input", str(tab), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    _one_line(capsys, "tab-separated", "data.source.format=tsv")
    assert main(["data", "prepare", "--input", str(tab), "--out", str(tmp_path / "a"), "--quiet",
                 "data.source.format=tsv", "min_user_events=1"]) == 0  # fmt: skip
    capsys.readouterr()
    plain = tmp_path / "plain.csv"
    plain.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u1,i{i},{1_600_000_000 + i}\n" for i in range(3))
    )
    assert main(["data", "prepare", "--input", str(plain), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    _one_line(capsys, "source.columns.behavior=null")
    argv = ["data", "prepare", "--input", str(plain), "--out", str(tmp_path / "b"), "--quiet"]
    assert main([*argv, "data.source.columns.behavior=null", "min_user_events=1"]) == 0


def test_a_line_break_inside_a_quoted_title_stays_one_line_per_event():
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red\nshoes", "blue \r\n hat"]})
    renderer = Renderer(items, ["view"], TextConfig(time="none"))
    text = renderer.render_window(np.array([0, 1]), np.array([0, 60]), np.array([0, 0]))
    assert text.splitlines() == ["viewed: red shoes", "viewed: blue hat"]
