"""An MCP server (stdio) that misbehaves on request, for the client's fault tests.

Usage: fake_server.py MODE LOG. MODE `normal` serves: three pages of tools; `echo`; `slow`
(answers after 30 s unless cancelled); `garbage` (writes a line that is not JSON-RPC instead of
answering); `die` (exits mid-call, saying why on stderr); `roots` (asks the client roots/list,
answers with what it got). MODE `old` answers initialize with a protocol version nobody speaks.
Every message received is appended to LOG, one JSON per line.
"""
import json, sys, threading, time

mode, log_path = sys.argv[1], sys.argv[2]
log = open(log_path, "a", buffering=1)
lock = threading.Lock()
cancelled = set()

def send(message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

def answer(id, result):
    send({"jsonrpc": "2.0", "id": id, "result": result})

TOOLS = [{"name": f"tool{i}", "description": f"tool number {i}", "inputSchema": {"type": "object"}} for i in range(7)]
TOOLS[0]["name"] = "echo"

pending_roots = {}

def slow(id):
    for _ in range(300):
        if id in cancelled:
            return
        time.sleep(0.1)
    answer(id, {"content": [{"type": "text", "text": "finally"}]})

for line in sys.stdin:
    message = json.loads(line)
    log.write(json.dumps(message) + "\n")
    method, id = message.get("method"), message.get("id")
    if method is None:
        # A response to our roots/list.
        waiting = pending_roots.pop(id, None)
        if waiting is not None:
            answer(waiting, {"content": [{"type": "text", "text": json.dumps(message.get("result"))}]})
        continue
    if method == "initialize":
        version = "1999-01-01" if mode == "old" else message["params"]["protocolVersion"]
        answer(id, {"protocolVersion": version, "capabilities": {"tools": {"listChanged": True}},
                    "serverInfo": {"name": "fake", "version": "9.9"}})
    elif method == "notifications/cancelled":
        cancelled.add(message["params"]["requestId"])
    elif method == "tools/list":
        cursor = int((message.get("params") or {}).get("cursor") or 0)
        page = TOOLS[cursor:cursor + 3]
        result = {"tools": page}
        if cursor + 3 < len(TOOLS):
            result["nextCursor"] = str(cursor + 3)
        answer(id, result)
    elif method == "tools/call":
        name = message["params"]["name"]
        if name == "echo":
            answer(id, {"content": [{"type": "text", "text": json.dumps(message["params"]["arguments"])}]})
        elif name == "slow":
            threading.Thread(target=slow, args=(id,), daemon=True).start()
        elif name == "garbage":
            with lock:
                sys.stdout.write("Traceback (most recent call last): oops\n")
                sys.stdout.flush()
        elif name == "die":
            sys.stderr.write("fatal: the fake server fell over\n")
            sys.stderr.flush()
            sys.exit(3)
        elif name == "roots":
            pending_roots[777] = id
            send({"jsonrpc": "2.0", "id": 777, "method": "roots/list"})
        elif name == "changed":
            TOOLS.append({"name": "added", "inputSchema": {"type": "object"}})
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
            answer(id, {"content": []})
        else:
            send({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
    elif id is not None:
        send({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}})
