"""The Celery worker: `celery -A worker worker` finds the app here; tasks live in worker.tasks."""

from worker.app import app

__all__ = ["app"]
