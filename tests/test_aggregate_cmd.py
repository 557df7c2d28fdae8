"""``genjobs aggregate`` run as a real process: output, exit codes, error messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = sorted((REPO / "tests" / "fixtures" / "aggregation").glob("*.json"))


def canon(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli.aggregate", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_prints_the_fixture_expectation(path: Path) -> None:
    expected = msgspec.json.decode(path.read_bytes())["expected"]
    done = run(str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert done.stdout.endswith(b"\n")
    assert done.stdout.count(b"\n") == 1
    output = msgspec.json.decode(done.stdout)
    assert set(output) == {
        "content",
        "content_filtered",
        "text",
        "text_without_reasoning",
        "runSteps",
    }
    for key in ("content", "content_filtered", "text", "text_without_reasoning"):
        assert canon(output[key]) == canon(expected[key]), key
    announced = {
        e["data"]["id"]
        for e in msgspec.json.decode(path.read_bytes())["events"]
        if e["event"] == "on_run_step"
    }
    assert {step["id"] for step in output["runSteps"]} == announced


def test_reads_stdin_and_keeps_non_ascii_as_is() -> None:
    events = [
        {
            "event": "on_run_step",
            "data": {"id": "s", "index": 0, "stepDetails": {"type": "message_creation"}},
        },
        {
            "event": "on_message_delta",
            "data": {"id": "s", "delta": {"content": [{"type": "text", "text": "héllo 🙂"}]}},
        },
    ]
    done = run("-", stdin=msgspec.json.encode({"events": events}))
    assert done.returncode == 0, done.stderr
    assert "héllo 🙂".encode() in done.stdout
    assert msgspec.json.decode(done.stdout)["text"] == "héllo 🙂"


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"{not json", b"is not valid JSON"),
        (b"[]", b'has no "events" list'),
        (b'{"events": {}}', b'has no "events" list'),
        (b'{"events": [1]}', b"events[0] is not an object"),
        (b'{"events": [{"data": {}}]}', b'events[0] has no string "event" name'),
        (b"\xff\xfe", b"is not valid JSON"),
    ],
    ids=[
        "bad-json",
        "no-events",
        "events-not-list",
        "event-not-object",
        "event-without-name",
        "not-utf8",
    ],
)
def test_invalid_input_exits_2_with_one_line_on_stderr(stdin: bytes, message: bytes) -> None:
    done = run("-", stdin=stdin)
    assert done.returncode == 2
    assert done.stdout == b""
    assert done.stderr.startswith(b"genjobs aggregate: error: stdin")
    assert message in done.stderr
    assert done.stderr.count(b"\n") == 1


def test_missing_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    done = run(str(missing))
    assert done.returncode == 2
    assert (
        done.stderr
        == f"genjobs aggregate: error: cannot read {missing}: No such file or directory\n".encode()
    )


def test_missing_argument_exits_2_with_usage() -> None:
    done = run()
    assert done.returncode == 2
    assert b"usage: genjobs aggregate" in done.stderr


def test_help_describes_the_command() -> None:
    done = run("--help")
    assert done.returncode == 0
    assert b"FILE" in done.stdout
    assert b"createContentAggregator" in done.stdout


def test_main_is_callable_in_process(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from service.cli.aggregate import main

    assert main([str(FIXTURES[0])]) == 0
    expected = msgspec.json.decode(FIXTURES[0].read_bytes())["expected"]
    assert msgspec.json.decode(capsysbinary.readouterr().out)["content"] == expected["content"]
