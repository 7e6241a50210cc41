"""The app's data: checked backups and restores (db), the database tools' one-off
containers, off-host copies, migrations, and the move to a managed database (move, its
checks, replication and relay) with the retirement of the local one."""
