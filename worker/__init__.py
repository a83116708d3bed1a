"""caddie worker: Celery tasks, the executor, launchers and log parsing."""
