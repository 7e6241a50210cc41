"""Sample JSON API for the Colorgate stack (stdlib HTTP server + psycopg2).

Endpoints:
  GET    /api/health         database status, color and version (503 when the DB is down)
  GET    /api/version        color and version of this container
  GET    /api/notes          list notes
  POST   /api/notes          create a note: {"body": "..."}
  GET    /api/notes/<id>     one note
  PUT    /api/notes/<id>     replace a note's body
  DELETE /api/notes/<id>     delete a note
  GET    /api/slow?ms=N      answers after N milliseconds (at most 10 s): a slow request
  GET    /api/stream?seconds=N&every=MS  server-sent events, one each MS ms (default 1000) for N seconds (at most 600)

Connection settings come from DATABASE_URL when set (a managed database), else from
libpq's environment (PGHOST, PGUSER, PGPASSWORD, PGDATABASE: the stack's own); the color and version from COLORGATE_COLOR and COLORGATE_VERSION.
"""

import json
import os
import re
import signal
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import psycopg2.pool

COLOR = os.environ.get("COLORGATE_COLOR", "unknown")
VERSION = os.environ.get("COLORGATE_VERSION", "unknown")
PORT = int(os.environ.get("PORT", "8000"))

def _database_url() -> str:
    """From the file DATABASE_URL_FILE names (how Colorgate delivers it), else DATABASE_URL;
    empty: libpq's PG* variables."""
    path = os.environ.get("DATABASE_URL_FILE")
    if path:
        with open(path) as f:
            return f.read().strip()
    return os.environ.get("DATABASE_URL", "")


DATABASE_URL = _database_url()
NOTE_PATH = re.compile(r"^/api/notes/(\d+)$")

_pool = None
_pool_lock = threading.Lock()


def pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = psycopg2.pool.ThreadedConnectionPool(1, POOL_SIZE, DATABASE_URL, connect_timeout=3)
        return _pool


POOL_SIZE = 8
# psycopg2's pool raises at once when all its connections are busy: wait for one
# instead (a burst of requests queues for a moment rather than failing).
_pool_slots = threading.BoundedSemaphore(POOL_SIZE)


class Db:
    """A pooled connection, returned (or discarded when broken) on exit."""

    def __enter__(self):
        if not _pool_slots.acquire(timeout=10):
            raise psycopg2.pool.PoolError("no database connection free for 10 s")
        try:
            for _ in range(POOL_SIZE + 1):
                self.conn = pool().getconn()
                try:  # a connection from before a database restart is dead: take another
                    with self.conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    break
                except psycopg2.Error:
                    pool().putconn(self.conn, close=True)
        except BaseException:
            _pool_slots.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        broken = exc_type is not None and isinstance(exc, psycopg2.Error)
        if exc_type is None:
            self.conn.commit()
        elif not self.conn.closed:
            self.conn.rollback()
        pool().putconn(self.conn, close=broken or bool(self.conn.closed))
        _pool_slots.release()
        return False


def note_json(row):
    return {"id": row[0], "body": row[1], "created_at": row[2].isoformat()}


class Handler(BaseHTTPRequestHandler):
    server_version = "colorgate-sample"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 75  # idle keep-alive connections are closed after this many seconds

    def log_request(self, code="-", size="-"):
        # The edge logs every request; here only the ones that went wrong.
        if isinstance(code, int) and code >= 400 or str(code).startswith(("4", "5")):
            super().log_request(code, size)

    def log_message(self, fmt, *args):  # errors and failed requests, one line each, on stdout
        headers = getattr(self, "headers", None)  # the client as the edge saw it (X-Forwarded-For)
        client = (headers.get("X-Forwarded-For") if headers else None) or self.address_string()
        sys.stdout.write("%s %s\n" % (client, fmt % args))
        sys.stdout.flush()

    def send_json(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Colorgate-Color", COLOR)
        self.send_header("X-Colorgate-Version", VERSION)
        self.send_header("X-Content-Type-Options", "nosniff")  # as web frameworks do: the edge's replaces it
        self.end_headers()
        self.wfile.write(body)

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/api/slow":
            time.sleep(min(int((query.get("ms") or ["1000"])[0]), 10_000) / 1000)
            return self.send_json(200, {"color": COLOR, "version": VERSION, "slept_ms": int((query.get("ms") or ["1000"])[0])})
        if url.path == "/api/stream":
            every = min(max(int((query.get("every") or ["1000"])[0]), 50), 10000) / 1000
            return self.stream(min(int((query.get("seconds") or ["30"])[0]), 600), every)
        if self.path == "/api/health":
            return self.health()
        if self.path == "/api/version":
            return self.send_json(200, {"color": COLOR, "version": VERSION})
        if self.path == "/api/whoami":  # the public URL, as an app builds its links from the edge's headers
            h = self.headers
            return self.send_json(200, {"url": f"{h.get('X-Forwarded-Proto')}://{h.get('X-Forwarded-Host')}/",
                                        "port": h.get("X-Forwarded-Port"), "forwarded": h.get("Forwarded"),
                                        "colorgate": sorted(k.lower() for k in h.keys() if k.lower().startswith("x-colorgate"))})
        if self.path == "/api/notes":
            with Db() as conn, conn.cursor() as cur:
                cur.execute("SELECT id, body, created_at FROM notes ORDER BY id")
                return self.send_json(200, [note_json(r) for r in cur.fetchall()])
        if url.path == "/api/notes/new":  # a GET that writes, as an audit row, a last_seen or an OAuth callback does
            try:
                with Db() as conn, conn.cursor() as cur:
                    cur.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id, body, created_at",
                                ((query.get("body") or ["from a GET"])[0],))
                    row = cur.fetchone()
            except psycopg2.Error as exc:  # the database refused it: said, never dropped
                return self.send_json(500, {"error": str(exc).strip().splitlines()[0]})
            return self.send_json(201, note_json(row))
        match = NOTE_PATH.match(self.path)
        if match:
            with Db() as conn, conn.cursor() as cur:
                cur.execute("SELECT id, body, created_at FROM notes WHERE id = %s", (int(match[1]),))
                row = cur.fetchone()
            return self.send_json(200, note_json(row)) if row else self.not_found()
        return self.not_found()

    def do_POST(self):
        if self.path != "/api/notes":
            return self.not_found()
        data = self.read_json()
        if not data or not isinstance(data.get("body"), str):
            return self.send_json(400, {"error": 'expected JSON {"body": "..."}'})
        with Db() as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO notes (body) VALUES (%s) RETURNING id, body, created_at", (data["body"],)
            )
            row = cur.fetchone()
        return self.send_json(201, note_json(row))

    def do_PUT(self):
        match = NOTE_PATH.match(self.path)
        data = self.read_json()
        if not match:
            return self.not_found()
        if not data or not isinstance(data.get("body"), str):
            return self.send_json(400, {"error": 'expected JSON {"body": "..."}'})
        with Db() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE notes SET body = %s WHERE id = %s RETURNING id, body, created_at",
                (data["body"], int(match[1])),
            )
            row = cur.fetchone()
        return self.send_json(200, note_json(row)) if row else self.not_found()

    def do_DELETE(self):
        match = NOTE_PATH.match(self.path)
        if not match:
            return self.not_found()
        with Db() as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM notes WHERE id = %s", (int(match[1]),))
            deleted = cur.rowcount
        return self.send_json(204 if deleted else 404, {} if deleted else {"error": "not found"})

    def stream(self, seconds, every=1.0):
        """Server-sent events, one each `every` seconds for `seconds`: a long-lived
        response, for drain behaviour at a switch."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # tell nginx to pass events through at once
        self.send_header("X-Colorgate-Color", COLOR)
        self.send_header("X-Colorgate-Version", VERSION)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for n in range(int(seconds / every)):
            self.wfile.write(f"id: {n}\ndata: {json.dumps({'n': n, 'color': COLOR})}\n\n".encode())
            self.wfile.flush()
            time.sleep(every)
        self.wfile.write(b"event: end\ndata: {}\n\n")
        self.wfile.flush()

    def health(self):
        status = {"status": "ok", "database": "ok", "color": COLOR, "version": VERSION}
        try:
            with Db() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        except psycopg2.Error as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            status.update(status="degraded", database="error: " + first_line)
            return self.send_json(503, status)
        return self.send_json(200, status)

    def not_found(self):
        return self.send_json(404, {"error": "not found"})

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except psycopg2.Error as exc:
            # The database went away mid-request: answer instead of dropping the connection.
            self.send_json(503, {"error": "database unavailable", "detail": type(exc).__name__})


def main():
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    # On SIGTERM (docker stop): stop accepting, let requests in flight finish (until
    # docker's stop timeout), then exit. As PID 1 the default action would be ignored.
    server.daemon_threads = False
    server.block_on_close = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"colorgate sample api: color={COLOR} version={VERSION} port={PORT}", flush=True)
    server.serve_forever()
    server.server_close()
    print("colorgate sample api: stopped", flush=True)


if __name__ == "__main__":
    main()
