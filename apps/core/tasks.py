from celery import shared_task


@shared_task(name="core.echo")
def echo(payload: dict) -> dict:
    """Round-trip probe: proves a task crosses the broker, runs in a worker process and comes back."""
    import os

    return {"payload": payload, "worker_pid": os.getpid()}
