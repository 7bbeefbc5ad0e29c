"""A real HTTP server on 127.0.0.1 that speaks the OpenAI completions format with scripted
answers: status codes to test retries, garbage to test counting, canned self-instruct text.

    with ScriptedServer(script=[(429, None), (500, None)], reply=lambda body: "text") as srv:
        srv.base_url   # http://127.0.0.1:PORT/v1
        srv.requests   # every request received: {"path", "headers" (lower-case names), "body"}

`script` items are consumed first, one per request: (status, text-or-None). Then every request
gets 200 with `reply(body)` as the completion text, until `fail_after` answers have been given:
from then on every request gets 503 (a server that went down). Token counts in `usage` are whitespace words
(prompt_words, output_words) unless `usage` overrides them. `delay_s`: each answer waits that long (a
slow server, requests in flight); `srv.max_in_flight` is the most requests it held at once.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class ScriptedServer:
    def __init__(self, script=(), reply: Callable[[dict], str] = lambda body: "", port: int = 0,
                 usage: tuple[int, int] | None = None, finish_reason: str = "stop", fail_after: int | None = None,
                 delay_s: float = 0.0):
        self.script = list(script)
        self.reply = reply
        self.usage = usage
        self.finish_reason = finish_reason
        self.fail_after = fail_after
        self.answered = 0
        self.delay_s = delay_s
        self.in_flight = self.max_in_flight = 0
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                with outer.lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    self._post()
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def _post(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                           "body": body})
                    step = outer.script.pop(0) if outer.script else None
                    if step is None and outer.fail_after is not None and outer.answered >= outer.fail_after:
                        step = (503, "down")
                    outer.answered += step is None
                if outer.delay_s:  # `requests` holds it already: a test can see it is in flight
                    time.sleep(outer.delay_s)
                if step is not None and step[0] != 200:
                    self._send(step[0], {"error": {"message": step[1] or f"scripted {step[0]}"}},
                               {"Retry-After": "0"} if step[0] == 429 else {})
                    return
                text = step[1] if step is not None else outer.reply(body)
                prompt = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
                p, o = outer.usage or (len(prompt.split()), len(text.split()))
                choice = {"index": 0, "finish_reason": outer.finish_reason}
                if self.path.endswith("/chat/completions"):
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                self._send(200, {"id": "x", "object": "text_completion", "choices": [choice],
                                 "usage": {"prompt_tokens": p, "completion_tokens": o, "total_tokens": p + o}})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
