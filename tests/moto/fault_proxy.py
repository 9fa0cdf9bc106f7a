#!/usr/bin/env python3
"""A fault-injecting HTTP proxy between the agent's AWS SDK and moto, for the
resilience tests (moto itself never fails). Test infrastructure only.

    fault_proxy.py MOTO_PORT          prints "PROXY_PORT <port>" once it listens on 127.0.0.1

Control (plain HTTP on the same port, not signed):

    POST /__faults {"cycle": [...]}   every request takes the next fault of the cycle, round and round
    POST /__faults {"queue": [...]}   the next requests take these faults once each, then pass
    POST /__faults {"match": [{"action": REGEX, "faults": [...]}]}
                                      requests whose action (below) matches REGEX take these
                                      faults once each, before the cycle or queue applies
    (the three combine in one document)
    GET  /__log                       every request so far: {"service", "action", "fault"}

An action is the API's Action field (EC2, RDS: "CreateDBInstance") or the REST
call (EKS: "POST /clusters/apps/node-groups").

Faults, each in the wire shape the real service uses, so that the SDK sees
what it would see from AWS:

    pass       forward to moto
    throttle   the service's throttling error (EKS 429 TooManyRequestsException, EC2 503
               RequestLimitExceeded, RDS 400 Throttling)
    500 502 503 504   a bare server error
    drop       close the connection without an answer
    lose       forward to moto (the change is made), then close without an answer:
               the caller cannot know whether its call took effect
    slow:S     wait S seconds, then forward
"""
import http.client
import http.server
import json
import re
import socket
import sys
import threading
import time
import urllib.parse

UPSTREAM = ("127.0.0.1", int(sys.argv[1]))
LOCK = threading.Lock()
STATE = {"cycle": [], "at": 0, "queue": [], "match": [], "log": []}


def service_of(headers):
    m = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", headers.get("Authorization", ""))
    return m.group(1) if m else "?"


def action_of(method, path, body):
    """The API action, for the log: the Action form field (EC2, RDS), or the REST call (EKS)."""
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if body else {}
    if "Action" in form:
        return form["Action"][0]
    return f"{method} {urllib.parse.urlparse(path).path}"


def throttle(svc, rid):
    if svc == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>'
            f"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
        )
        return 503, {"Content-Type": "text/xml;charset=UTF-8"}, body
    if svc in ("rds", "iam", "sts"):
        body = (
            '<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type>'
            f"<Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>"
        )
        return 400, {"Content-Type": "text/xml"}, body
    if svc == "secretsmanager":
        return 400, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(
            {"__type": "ThrottlingException", "message": "Rate exceeded"}
        )
    return 429, {"Content-Type": "application/json", "x-amzn-ErrorType": "TooManyRequestsException"}, json.dumps(
        {"message": "Too Many Requests"}
    )


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, headers, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def hang_up(self):
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def forward(self, body):
        c = http.client.HTTPConnection(*UPSTREAM, timeout=60)
        c.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        r = c.getresponse()
        return r.status, [(k, v) for k, v in r.getheaders()], r.read()

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path == "/__faults":
            spec = json.loads(body or b"{}")
            with LOCK:
                STATE["cycle"] = spec.get("cycle", [])
                STATE["queue"] = spec.get("queue", [])
                STATE["match"] = [(re.compile(m["action"]), list(m["faults"])) for m in spec.get("match", [])]
                STATE["at"] = 0
            return self.reply(200, {"Content-Type": "application/json"}, "{}")
        if self.path == "/__log":
            with LOCK:
                return self.reply(200, {"Content-Type": "application/json"}, json.dumps(STATE["log"]))
        svc = service_of(self.headers)
        action = action_of(self.command, self.path, body)
        with LOCK:
            matched = next((f for rx, f in STATE["match"] if f and rx.fullmatch(action)), None)
            if matched:
                fault = matched.pop(0)
            elif STATE["queue"]:
                fault = STATE["queue"].pop(0)
            elif STATE["cycle"]:
                fault = STATE["cycle"][STATE["at"] % len(STATE["cycle"])]
                STATE["at"] += 1
            else:
                fault = "pass"
            STATE["log"].append({"service": svc, "action": action, "fault": fault})
        rid = f"fault-proxy-{time.time_ns()}"
        if fault == "throttle":
            status, headers, payload = throttle(svc, rid)
            return self.reply(status, {**headers, "x-amzn-RequestId": rid}, payload)
        if fault in ("500", "502", "503", "504"):
            return self.reply(int(fault), {"Content-Type": "text/plain", "x-amzn-RequestId": rid}, "injected")
        if fault == "drop":
            return self.hang_up()
        if fault.startswith("slow:"):
            time.sleep(float(fault[5:]))
        status, headers, data = self.forward(body)
        if fault == "lose":
            return self.hang_up()
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PROXY_PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
