"""`space.io`: one damaged-line rule for every resumable log, atomic whole-file writes, record reading."""

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


def test_a_damaged_line_in_the_middle_costs_only_its_own_record(tmp_path):
    """Issue 17 item 8: reading used to stop at the first bad line, dropping every valid record after it."""
    path = tmp_path / "log.jsonl"
    valid = [{"id": i} for i in range(80)]
    lines = [json.dumps(r) for r in valid]
    lines[4] = lines[4][:5]  # torn in the middle (an editor, a disk, a copy)
    path.write_bytes(("\n".join(lines[:10]) + "\n[1, 2]\n\xff\xfe garbage\n\n" + "\n".join(lines[10:]) + "\n")
                     .encode("latin-1"))
    log = JsonlLog(path)
    expected = valid[:4] + valid[5:]
    assert log.read() == expected and log.damaged == 3  # the torn line, a non-object, bytes that are not UTF-8
    assert log.resume() == expected and log.damaged == 3
    assert JsonlLog(path).read() == expected and path.read_text() == "".join(json.dumps(r) + "\n" for r in expected)
    log.append({"id": 4})
    assert JsonlLog(path).read()[-1] == {"id": 4}


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


def test_read_records_names_a_file_that_is_not_utf8_or_not_gzip(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes('{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(SpaceError, match=r"latin.jsonl: not UTF-8 text \(byte 15\); save the file as UTF-8"):
        read_records(tmp_path / "latin.jsonl")
    (tmp_path / "fake.jsonl.gz").write_text('{"a": 1}\n')
    with pytest.raises(SpaceError, match="fake.jsonl.gz: not a complete gzip file"):
        read_records(tmp_path / "fake.jsonl.gz")
    with gzip.open(tmp_path / "cut.jsonl.gz", "wt") as handle:
        handle.write('{"a": 1}\n' * 1000)
    data = (tmp_path / "cut.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpaceError, match="cut.jsonl.gz: not a complete gzip file"):
        read_records(tmp_path / "cut.jsonl.gz")


def test_the_provenance_record_says_what_and_where_a_measurement_ran():
    import re
    from datetime import datetime

    import torch

    from space.io import provenance

    record = provenance("cpu")
    assert set(record) == {"versions", "device", "threads", "date", "commit"}
    assert record["versions"]["torch"] == torch.__version__ and record["threads"] == torch.get_num_threads()
    assert record["device"]["type"] == "cpu" and record["device"]["arch"]
    assert datetime.fromisoformat(record["date"]).tzinfo is not None
    assert record["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+changes)?", record["commit"])


def test_no_commit_outside_a_checkout(monkeypatch, tmp_path):
    import space.io as io_module

    monkeypatch.setattr(io_module, "__file__", str(tmp_path / "io.py"))  # a package outside any git checkout
    assert io_module.source_commit() is None
