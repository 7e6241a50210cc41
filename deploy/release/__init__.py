"""Releases as plans: the one executor (plans), the record of releases (history),
deploy, switch and rollback (releases), canaries, the traffic analysis, the gates' side of
the engine, and the repair of a run that died (recover)."""
