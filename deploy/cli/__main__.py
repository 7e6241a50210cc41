"""`python -m deploy.cli TASK`: the `colorgate` command, where only the interpreter's path
is known (the daily certificate renewal's cron line)."""

from deploy.cli import main

main()
