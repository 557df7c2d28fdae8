"""``genjobs demo --http``: it prints the URL of the demo page, which the gateway serves, and the
page's job streams over SSE with the token the URL carries; Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.procs import REPO

URL_RE = re.compile(r"(http://127\.0\.0\.1:\d+/demo/\?\S+)")


@pytest.mark.timeout(120)
async def test_demo_http_prints_a_page_url_that_serves_the_page_and_its_stream() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.cli",
        "demo",
        "--http",
        "127.0.0.1:0",
        "--token-delay",
        "0.001",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # A child started from a non-interactive shell may inherit SIGINT ignored: restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            url = None
            while url is None:
                line = (await proc.stdout.readline()).decode()
                assert line, "demo ended before printing the page's URL:\n" + "".join(lines)
                lines.append(line)
                m = URL_RE.search(line)
                url = m.group(1) if m else None
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            base = f"{parts.scheme}://{parts.netloc}"
            job, token = query["job"][0], query["token"][0]
            async with aiohttp.ClientSession() as s:
                async with s.get(url) as page:
                    assert page.status == 200
                    assert page.content_type == "text/html"
                    assert 'src="demo.js"' in await page.text()
                async with s.get(f"{base}/demo/demo.js") as js:
                    assert js.status == 200
                    assert "EventSource" in await js.text()
                async with s.get(f"{base}/api/agents/chat/stream/{job}") as anon:
                    assert anon.status == 401  # nothing is served without the URL's token
                stream = f"{base}/api/agents/chat/stream/{job}?token={token}"
                async with s.get(stream) as sse:
                    assert sse.status == 200
                    assert sse.content_type == "text/event-stream"
                    first = b""
                    while b"\nevent: message\n" not in first:
                        first += await sse.content.readany()
                    assert re.search(rb"^id: \d+$", first, re.MULTILINE)
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "demo ended before its checks:\n" + "".join(lines)
                lines.append(line)
                if "stays up until Ctrl-C" in line:
                    break
            assert any("All checks passed." in x for x in lines), "".join(lines)
            assert not any("✘" in x for x in lines), "".join(lines)
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
