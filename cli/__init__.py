"""The `caddie` command line."""
