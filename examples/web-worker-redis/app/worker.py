"""The jobs worker: takes job ids from the Redis queue and marks them done in PostgreSQL,
with the color that did them. Stops cleanly on SIGTERM (finishing the job at hand)."""

import os
import signal
import time

import psycopg2
import redis

QUEUE = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://cache:6379/0"), socket_timeout=5)
# from the file JOBS_DATABASE_URL_FILE names (how Colorgate delivers it), else JOBS_DATABASE_URL
_URL_FILE = os.environ.get("JOBS_DATABASE_URL_FILE")
DATABASE_URL = open(_URL_FILE).read().strip() if _URL_FILE else os.environ.get("JOBS_DATABASE_URL", "")
WHO = f"{os.environ.get('COLORGATE_COLOR', '?')} {os.environ.get('COLORGATE_VERSION', '?')}"
running = True


def stop(*_):
    global running
    running = False


def main():
    signal.signal(signal.SIGTERM, stop)
    print(f"jobs worker ({WHO}) started", flush=True)
    while running:
        try:
            item = QUEUE.brpop("jobs", timeout=1)
            if not item:
                continue
            with psycopg2.connect(DATABASE_URL, connect_timeout=3) as conn, conn.cursor() as cur:
                cur.execute("UPDATE jobs SET done_by = %s, done = now() WHERE id = %s", (WHO, int(item[1])))
        except (redis.RedisError, psycopg2.Error) as exc:
            print(f"jobs worker: {exc}; retrying", flush=True)
            time.sleep(1)
    print("jobs worker stopped", flush=True)


if __name__ == "__main__":
    main()
