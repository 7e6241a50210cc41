"""Colorgate: blue/green deploys of a Docker Compose stack behind nginx, gated."""
