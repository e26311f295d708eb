"""The sweep-output checker alone (no DomainBed): which lines are damaged, and the message."""

import pytest

from domainbed_align.errors import ResultsFileError
from domainbed_align.records import check_results_files, damaged_lines


def _write(root, run, content: bytes):
    (root / run).mkdir(parents=True, exist_ok=True)
    (root / run / "results.jsonl").write_bytes(content)


def test_finds_each_kind_of_damage_and_nothing_else(tmp_path):
    _write(tmp_path, "ok", b'{"a": 1}\n{"a": 2}\n')
    _write(tmp_path, "partial", b'{"a": 1}\n{"a": ')
    _write(tmp_path, "list", b'[1, 2]\n')
    _write(tmp_path, "binary", b'{"a": 1}\n\xff\xfe\n')
    _write(tmp_path, "no_final_newline", b'{"a": 1}\n{"a": 2}')  # upstream drops each line's last character
    _write(tmp_path, "blank_line", b'{"a": 1}\n\n{"a": 2}\n')
    _write(tmp_path, "crlf", b'{"a": 1}\r\n{"a": 2}\r\n')  # text mode reads these as plain newlines
    (tmp_path / "empty_run").mkdir()  # a run that never wrote a checkpoint is not damaged
    found = {(path.parent.name, number): reason for path, number, reason in damaged_lines(tmp_path)}
    assert set(found) == {("partial", 2), ("list", 1), ("binary", 0), ("no_final_newline", 2), ("blank_line", 2)}
    assert found[("no_final_newline", 2)] == "a complete record without its final newline (add one)"
    assert found[("partial", 2)].startswith("not JSON")
    assert found[("list", 1)] == "a JSON list, not a record"
    assert found[("binary", 0)].startswith("not UTF-8 text")


def test_message_names_files_counts_the_rest_and_says_the_fix(tmp_path):
    for index in range(7):
        _write(tmp_path, f"run{index}", b'{"a": 1}\n{')
    with pytest.raises(ResultsFileError) as raised:
        check_results_files(tmp_path)
    message = str(raised.value)
    assert message.count("line 2: not JSON") == 5 and "(and 2 more)" in message
    assert "delete the damaged line" in message and "Nothing was changed" in message
    assert "\n" not in message


def test_intact_folder_passes_and_missing_folder_is_named(tmp_path):
    _write(tmp_path, "ok", b'{"a": 1}\n')
    check_results_files(tmp_path)  # no error
    with pytest.raises(ResultsFileError, match="'.*nowhere' is not a folder"):
        check_results_files(tmp_path / "nowhere")
