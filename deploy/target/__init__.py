"""The target a stack runs on: the runner every command goes through, SSH, the
facts read from the engine, and its two implementations (one Docker engine driven by
`docker compose`, or a Docker Swarm), chosen once from the settings (targets.of)."""
