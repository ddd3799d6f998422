"""`space.io`: one torn-line rule for every resumable log, atomic whole-file writes, record reading."""

import gzip
import json

import pytest

from space.errors import SpaceError
from space.io import JsonlLog, read_records, write_atomic, write_json


def test_log_appends_and_reads_back(tmp_path):
    log = JsonlLog(tmp_path / "sub" / "log.jsonl")
    assert log.read() == [] and log.resume() == []
    log.append({"id": 1})
    log.append([{"id": 2}, {"id": 3}])
    assert [r["id"] for r in log.read()] == [1, 2, 3]


def test_torn_last_line_is_dropped_and_appends_continue_cleanly(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "tex')  # interrupted mid-write
    log = JsonlLog(path)
    assert log.read() == [{"id": 1}, {"id": 2}]
    assert log.resume() == [{"id": 1}, {"id": 2}]
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'  # the torn tail is gone before anything is appended
    log.append({"id": 3})
    assert [r["id"] for r in log.read()] == [1, 2, 3]


def test_reading_stops_at_the_first_line_that_does_not_parse(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": \n{"id": 3}\n')
    assert JsonlLog(path).read() == [{"id": 1}]


def test_resume_leaves_an_intact_file_untouched(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n')
    before = path.stat().st_mtime_ns
    JsonlLog(path).resume()
    assert path.stat().st_mtime_ns == before


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    write_atomic(tmp_path / "a" / "x.txt", "hello")
    write_json(tmp_path / "a" / "y.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "a" / "x.txt").read_text() == "hello"
    assert json.loads((tmp_path / "a" / "y.json").read_text()) == {"a": 2, "b": 1}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.txt", "y.json"]


def test_read_records_json_jsonl_and_gzip(tmp_path):
    (tmp_path / "r.json").write_text('[{"a": 1}]')
    (tmp_path / "r.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    with gzip.open(tmp_path / "r.jsonl.gz", "wt") as handle:
        handle.write('{"a": 3}\n')
    assert read_records(tmp_path / "r.json") == [{"a": 1}]
    assert read_records(tmp_path / "r.jsonl") == [{"a": 1}, {"a": 2}]
    assert read_records(tmp_path / "r.jsonl.gz") == [{"a": 3}]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnope\n')
    with pytest.raises(SpaceError, match="line 2"):
        read_records(tmp_path / "bad.jsonl")
