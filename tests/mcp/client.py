"""Drives `oci-sandbox mcp` with the official Python MCP SDK (PyPI's `mcp`), as any agent
would: over stdio (`client.py stdio BINARY ARGS...`) or streamable HTTP (`client.py http
URL`). Prints one JSON line per check; the Rust test (tests/mcp.rs) reads and asserts them.
In http mode it also stops twice, printing `PAUSE <what>` and waiting for a line on stdin,
so that the test can look at the runtime's containers while sessions are open and after
they have closed."""

import asyncio
import base64
import json
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client


def report(check, **fields):
    print(json.dumps({"check": check, **fields}), flush=True)


def texts(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def call(session, name, args):
    """A tool call: its result, or the error it raised (a JSON-RPC error)."""
    try:
        result = await session.call_tool(name, args)
        return {"ok": True, "error": bool(result.is_error), "text": texts(result),
                "images": [c.mime_type for c in result.content if getattr(c, "type", "") == "image"],
                "png": [len(base64.b64decode(c.data)) for c in result.content
                        if getattr(c, "type", "") == "image"],
                "png_header": [base64.b64decode(c.data)[:8].hex() for c in result.content
                               if getattr(c, "type", "") == "image"]}
    except Exception as e:  # the SDK raises on a JSON-RPC error
        return {"ok": False, "raised": type(e).__name__, "message": str(e)}


async def every_tool(session):
    tools = await session.list_tools()
    report("tools", names=sorted(t.name for t in tools.tools))
    report("set", **await call(session, "run_code", {"code": "x = 41"}))
    report("get", **await call(session, "run_code", {"code": "x + 1"}))
    report("plot", **await call(session, "run_code", {
        "code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"}))
    report("shell", **await call(session, "run_code", {"code": "cd /tmp; echo $PWD", "language": "shell"}))
    report("command", **await call(session, "run_command", {"command": "echo hi; echo err >&2; exit 3"}))
    report("slow", **await call(session, "run_command", {"command": "sleep 30", "timeout_seconds": 1}))
    report("write", **await call(session, "write_file", {"path": "/tmp/note.txt", "content": "hello"}))
    report("read", **await call(session, "read_file", {"path": "/tmp/note.txt"}))
    report("list", **await call(session, "list_files", {"path": "/tmp"}))
    report("missing", **await call(session, "read_file", {"path": "/nope"}))
    report("bad_args", **await call(session, "run_code", {"code": 5}))
    report("bad_language", **await call(session, "run_code", {"code": "1", "language": "cobol"}))
    report("unknown_tool", **await call(session, "no_such_tool", {}))
    report("after_errors", **await call(session, "run_code", {"code": "x"}))
    report("reset", **await call(session, "reset", {}))
    report("after_reset", **await call(session, "run_code", {"code": "x"}))


async def stdio(argv):
    begun = time.monotonic()
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            first = await call(session, "run_command", {"command": "true"})
            report("startup", ms=(time.monotonic() - begun) * 1000, **first)
            await every_tool(session)


async def pause(what):
    print(f"PAUSE {what}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def http(url):
    # Malformed requests get JSON-RPC errors, and the server goes on.
    import urllib.error
    import urllib.request

    def post(body):
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Accept": "application/json, text/event-stream", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()[:300]
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()[:300]

    status, body = post(b"{not json")
    report("garbage", status=status, body=body)
    status, body = post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}).encode())
    report("no_session", status=status, body=body)
    async with streamable_http_client(url) as (read_a, write_a):
        async with ClientSession(read_a, write_a) as a:
            await a.initialize()
            async with streamable_http_client(url) as (read_b, write_b):
                async with ClientSession(read_b, write_b) as b:
                    await b.initialize()
                    report("a_set", **await call(a, "run_code", {"code": "secret = 'a'"}))
                    got_a, got_b = await asyncio.gather(
                        call(a, "run_code", {"code": "secret"}),
                        call(b, "run_code", {"code": "secret"}),
                    )
                    report("a_get", **got_a)
                    report("b_get", **got_b)
                    await every_tool(b)
                    await pause("two sessions open")
    await pause("sessions closed")
    report("done")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "stdio":
        asyncio.run(stdio(sys.argv[2:]))
    else:
        asyncio.run(http(sys.argv[2]))
