"""``genjobs tail JOB_ID --user U``: follow one job live, the way an SSE gateway would.

It is a reader like any other: :class:`~service.client.reader.LiveHub` replays what is stored after
``--after`` and then follows the republished live subject. The only state it keeps is the seq of
the last event it printed; when the connection goes away for longer than the reader tolerates it
opens a new reader after that seq, so a reconnect never prints an event twice or skips one.

The job is checked first through ``<prefix>.api.status`` with the caller's user (and tenant), so
``tail`` refuses another user's job exactly as the service does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import msgspec
from nats.aio.client import Client as NATS

from service.cli.common import (
    EXIT_FAILED,
    EXIT_NO_NATS,
    EXIT_OK,
    CliError,
    api_request,
    connect,
    settings_from,
)
from service.client.presence import presence_hub
from service.client.reader import LiveHub, ReaderError, ReadEvent
from service.config import Settings
from service.nats.directget import ReplayTimeout

_enc = msgspec.json.Encoder()


class Renderer:
    """Text and reasoning deltas inline; one compact bracketed line for anything else."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._mode = ""  # "text" | "think" | "" (at the start of a line)

    def _line_break(self) -> None:
        if self._mode:
            self.out.write("\n")
            self._mode = ""

    def event(self, ev: ReadEvent) -> None:
        payload = ev.event or {}
        name = payload.get("event") if isinstance(payload.get("event"), str) else None
        if name in ("on_message_delta", "on_reasoning_delta"):
            mode = "text" if name == "on_message_delta" else "think"
            text = _delta_text(payload.get("data"), "text" if mode == "text" else "think")
            if text is not None:
                if self._mode != mode:
                    self._line_break()
                    if mode == "think":
                        self.out.write("(thinking) ")
                self._mode = mode
                self.out.write(text)
                self.out.flush()
                return
        self._line_break()
        self.out.write(f"[seq {ev.seq} #{ev.index} {ev.kind}{_describe(payload, name)}]\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self._line_break()
        self.out.write(f"-- {text}\n")
        self.out.flush()


def _delta_text(data: Any, part_type: str) -> str | None:
    """The text of a delta made only of ``part_type`` parts; None if it holds anything else."""
    try:
        parts = data["delta"]["content"]
        if not isinstance(parts, list):
            return None
        pieces = []
        for part in parts:
            if part.get("type") != part_type or not isinstance(part.get(part_type), str):
                return None
            pieces.append(part[part_type])
        return "".join(pieces)
    except (KeyError, TypeError, AttributeError):
        return None


def _describe(payload: dict[str, Any], name: str | None) -> str:
    if name is not None:
        data = payload.get("data")
        extra = ""
        if name == "on_run_step" and isinstance(data, dict):
            extra = f" {data.get('type', '')}".rstrip()
            details = data.get("stepDetails")
            if isinstance(details, dict) and details.get("type") == "tool_calls":
                calls = details.get("tool_calls") or []
                names = [c.get("name") for c in calls if isinstance(c, dict)]
                extra += f" {','.join(n for n in names if n)}"
        return f" {name}{extra}"
    if payload.get("final"):
        return " aborted" if payload.get("aborted") else ""
    if "error" in payload:
        return f": {payload['error']}"
    return ""


async def tail(args: argparse.Namespace) -> int:
    """Raises: CliError (exit 1 for a refused job, 3 when NATS or the service is unreachable)."""
    settings = settings_from(args)
    url = settings.nats_url or "nats://127.0.0.1:4222"
    hub: LiveHub | None = None

    async def reconnected() -> None:
        if hub is not None:
            hub.on_reconnected()

    nc = await connect(url, name="genjobs-tail", forever=True, reconnected_cb=reconnected)
    try:
        body: dict[str, Any] = {"jobId": args.job_id, "userId": args.user}
        if args.tenant:
            body["tenantId"] = args.tenant
        ok, reply = await api_request(nc, settings, "status", body)
        if not ok:
            sys.stderr.write(_enc.encode(reply).decode() + "\n")
            return EXIT_FAILED
        # Announced like any reader, so the owner counts this one in the job's presence.
        hub, announcer = presence_hub(nc, settings)
        await announcer.start()
        try:
            return await _follow(nc, hub, settings, args)
        finally:
            await hub.close()
            await announcer.stop()
    finally:
        await nc.close()


async def _follow(nc: NATS, hub: LiveHub, settings: Settings, args: argparse.Namespace) -> int:
    renderer = Renderer(sys.stdout)
    after = args.after
    count = 0
    while True:
        try:
            async with hub.subscribe(args.job_id, after) as reader:
                async for ev in reader:
                    after = ev.seq
                    count += 1
                    if args.json:
                        line = {"seq": ev.seq, "index": ev.index, "kind": ev.kind}
                        line["event"] = ev.event
                        sys.stdout.write(_enc.encode(line).decode() + "\n")
                        sys.stdout.flush()
                    else:
                        renderer.event(ev)
                    if ev.terminal:
                        if not args.json:
                            renderer.note(
                                f"job ended ({ev.kind}) after {count} events, seq {after}"
                            )
                        return EXIT_OK
            # The reader ended without a terminal event: only a closed hub does that.
            raise CliError("the reader stopped before the job ended", EXIT_FAILED)
        except (ReplayTimeout, ReaderError) as e:
            if nc.is_closed:
                raise CliError(
                    f"connection closed; resume with --after {after}", EXIT_NO_NATS
                ) from e
            print(f"-- connection trouble ({e}); resuming after seq {after}", file=sys.stderr)
            await _wait_connected(nc)


async def _wait_connected(nc: NATS) -> None:
    """Wait until the client has reconnected (nats-py reconnects by itself)."""
    while not nc.is_connected:
        if nc.is_closed:
            return
        await asyncio.sleep(0.2)
