"""The edge's state: the one module that reads and writes the files in its state
directory (`/etc/colorgate/state`, the `edge-state` volume), all through Docker.

    live            which color (and version) is live: `color=..`, `version=..` lines,
                    read by the edge on every request (compose/edge/colorgate.lua), so a
                    switch is one validated atomic rename and no reload
    freeze          present only during a write freeze (db.move): `hold=SECONDS`; writes
                    are held that long, then passed on or answered 503
    canary          during a canary deploy: which color gets which share of users
                    (`color`, `version`, `percent`, `offset`, `since`, `decision`)
    maintenance     present only in maintenance mode: `retry`, `since`, `message`
    gate-token      the gates' token, made by the edge at its start (read_gate_token)
    database.json   where the app's database is (written by db.move, retire-local)
    lock/           the release lock (mkdir): holder JSON, token, heartbeat, phase
    history.jsonl   every release, one JSON record a line: its intent when it starts,
                    then its outcome (the same `id`; the last line of an id wins)

The live color is read from the edge itself, never from a file on the operator's
machine. Rendering and parsing are pure; the commands that read and change the edge
are returned as argument lists for deploy.target.runner. The files: state.py (the live
color, the shell kept open in the edge, the routes, draining), modes.py (the write freeze,
maintenance, the canary, the database record, the gates' token), ledger.py (the release
lock's scripts and the history), routes.py (the routes file nginx loads); nothing outside
this package touches them. Beside them, the lock as a command holds it (locking.py), what
the edge serves over TLS (tls.py), ACME certificates (acme.py) and the app's answers as the
edge sees them (probes.py).
"""

from deploy.edge.ledger import *  # noqa: F401,F403
from deploy.edge.modes import *  # noqa: F401,F403
from deploy.edge.routes import *  # noqa: F401,F403
from deploy.edge.state import *  # noqa: F401,F403
