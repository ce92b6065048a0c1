"""The Celery worker: `celery -A worker worker` finds the app here; tasks live in worker.tasks.

The app is imported lazily, so `digits` can build its command line without Celery or settings loaded.
"""


def __getattr__(name: str):
    if name in ("app", "celery"):
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
