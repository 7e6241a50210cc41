"""The jobs web service: server-rendered HTML (stdlib), PostgreSQL and a Redis queue.

  GET  /          the page: every job and whether the worker has done it
  POST /jobs      form field `text`: record a job, queue it, redirect to /
  GET  /jobs/<id> one job as JSON (the tests poll it until the worker is done)
  GET  /-/ready   {"db": "up"|"down", "cache": "up"|"down"}: 200 only when both are up
"""

import html
import json
import os
import re
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import psycopg2
import redis

# from the file JOBS_DATABASE_URL_FILE names (how Colorgate delivers it), else JOBS_DATABASE_URL
_URL_FILE = os.environ.get("JOBS_DATABASE_URL_FILE")
DATABASE_URL = open(_URL_FILE).read().strip() if _URL_FILE else os.environ.get("JOBS_DATABASE_URL", "")
QUEUE = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://cache:6379/0"), socket_timeout=2)
COLOR = os.environ.get("COLORGATE_COLOR", "?")
JOB = re.compile(r"^/jobs/(\d+)$")


def db():
    return psycopg2.connect(DATABASE_URL, connect_timeout=2)


class Handler(BaseHTTPRequestHandler):
    server_version = "jobs"

    def send(self, code, body, content_type="text/html; charset=utf-8", headers=()):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/-/ready":
            state = {"db": "down", "cache": "down"}
            try:
                with db() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM jobs LIMIT 1")
                state["db"] = "up"
            except psycopg2.Error:
                pass
            try:
                QUEUE.ping()
                state["cache"] = "up"
            except redis.RedisError:
                pass
            return self.send(200 if set(state.values()) == {"up"} else 503, json.dumps(state), "application/json")
        match = JOB.match(self.path)
        if match:
            with db() as conn, conn.cursor() as cur:
                cur.execute("SELECT id, text, done_by FROM jobs WHERE id = %s", (int(match[1]),))
                row = cur.fetchone()
            if not row:
                return self.send(404, json.dumps({"error": "no such job"}), "application/json")
            return self.send(200, json.dumps({"id": row[0], "text": row[1], "done_by": row[2]}), "application/json")
        if self.path != "/":
            return self.send(404, "<h1>Not found</h1>")
        with db() as conn, conn.cursor() as cur:
            cur.execute("SELECT id, text, done_by FROM jobs ORDER BY id DESC LIMIT 50")
            rows = cur.fetchall()
        items = "".join(f"<li>#{i} {html.escape(t)}: {'done by ' + html.escape(d) if d else 'queued'}</li>" for i, t, d in rows)
        self.send(200, f"<!doctype html><title>Jobs</title><h1>Jobs</h1><ul>{items}</ul>"
                       f"<form method=post action=/jobs><input name=text><button>Add</button></form>"
                       f"<footer>served by {html.escape(COLOR)}</footer>")

    def do_POST(self):
        if self.path != "/jobs":
            return self.send(404, "<h1>Not found</h1>")
        length = int(self.headers.get("Content-Length") or 0)
        text = parse_qs(self.rfile.read(length).decode()).get("text", [""])[0].strip()
        if not text:
            return self.send(400, "<h1>A job needs text</h1>")
        with db() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO jobs (text) VALUES (%s) RETURNING id", (text,))
            job = cur.fetchone()[0]
        QUEUE.lpush("jobs", job)
        self.send(303, "", headers=[("Location", "/"), ("X-Job", str(job))])

    def log_message(self, fmt, *args):
        pass


def main():
    server = ThreadingHTTPServer(("0.0.0.0", 5000), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"jobs web ({COLOR}) on :5000", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
