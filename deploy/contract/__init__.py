"""The app contract: a plain Compose file plus a top-level `x-colorgate:` block.

The user writes each service once. The block says which services are colored (a blue
and a green copy per release), which are shared (started once), the routes the edge
serves, each routed service's health check, the migration command and the database.
Everything Colorgate knows about an app comes from here: nothing in deploy/, steps/ or
the built-in features names a service, a port or a path of any app.

    x-colorgate:
      colored: [web, worker]              # or a mapping: {web: {replicas: 3}, worker: {}} (tasks per color on a Swarm)
      shared: [db, redis]
      routes:
        - path: /                         # longest prefix wins, as in nginx
          to: web:5000
          websocket: false                # pass Upgrade/Connection (WebSocket)
          buffering: true                 # false for server-sent events
          timeout: 60                     # seconds nginx waits for the upstream to answer
          body_size: 10m                  # largest request body
          analysis: {max_error_ratio: 0.05, max_p95_ms: 3000}   # this route's own bounds after a switch
      health:
        web: {path: /healthz, status: 200, json: {db: ok}, contains: "", timeout: 5, port: 5000}
      migrations:
        service: web                      # a colored service: run in its candidate image
        command: [python, manage.py, migrate]
        status: [python, manage.py, migrate, --check]   # exit 0: at head; other: pending
      database:
        service: db                       # a shared PostgreSQL service
        env: DATABASE_URL                 # the variable the app reads its URL from, or better:
        file: DATABASE_URL_FILE           # the variable naming a file that holds it (a secret as a file)
        clients: [web, worker]            # default: colored services on the db's networks

Parsing and validation are pure (`parse`, in parse.py; the App and its parts are in
model.py); deploy/render.py turns an App into the compose file Colorgate runs, and
deploy/edge/routes.py into the edge's routes.
"""

from deploy.contract.model import *  # noqa: F401,F403
from deploy.contract.parse import compose_in, find_file, load, parse, read_compose  # noqa: F401
