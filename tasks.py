"""`invoke` in Colorgate's checkout: the tasks of the `colorgate` command (deploy/cli/).
An app's repository can hold the same one line to run them as `invoke deploy`."""

from deploy.cli import ns  # noqa: F401
