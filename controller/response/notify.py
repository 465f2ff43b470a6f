"""Delivering `notify` jobs: a log line, or a JSON POST to a webhook.

The engine only queues jobs (plain dicts).  The app hands them to one worker
on the hub through a bounded queue, so a slow or dead webhook costs the worker
its timeouts and retries, never the control loop; when the queue is full the
newest job is dropped and counted, rather than blocking the caller.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any, Callable

LOG = logging.getLogger("iotguard.notify")

QUEUE_SIZE = 1000
BACKOFF_S = 0.5          # first retry delay; doubles per retry


def payload(job: dict) -> dict:
    """What a webhook receives: the alert (with its explanation) and what was done about it."""
    alert = job.get("alert") or {}
    return {"source": "iotguard", "playbook": job.get("playbook"), "mode": job.get("mode"),
            "alert": alert, "actions": job.get("actions", [])}


def summary(job: dict) -> str:
    alert = job.get("alert") or {}
    acts = ", ".join(f"{a.get('action')} {a.get('outcome')}" + (f" (#{a['response_id']})" if a.get("response_id")
                                                               else "")
                     for a in job.get("actions", [])) or "no action"
    return (f"[{job.get('playbook')}{' dry-run' if job.get('mode') == 'dry-run' else ''}] "
            f"{alert.get('kind')} {alert.get('device')}: {alert.get('explanation')} -> {acts}")


def post(url: str, body: bytes, timeout: float) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "iotguard"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:   # noqa: S310 - URL validated by the playbook
        return resp.status


def deliver(job: dict, send: Callable[[str, bytes, float], int] = post,
            sleep: Callable[[float], Any] = time.sleep) -> bool:
    """Deliver one job; True when done.  A webhook gets 1 + `retries` attempts, each
    bounded by `timeout_s`, with doubling backoff; a failure is logged, not raised."""
    if job.get("webhook") is None:
        LOG.warning("NOTIFY %s", summary(job))
        return True
    url = job["webhook"]
    body = json.dumps(payload(job), default=str).encode()
    attempts = 1 + int(job.get("retries") or 0)
    delay = BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            status = send(url, body, float(job.get("timeout_s") or 5))
            if 200 <= status < 300:
                LOG.info("notify: %s answered %d", url, status)
                return True
            error = f"HTTP {status}"
        except urllib.error.HTTPError as e:
            error = f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            error = str(getattr(e, "reason", e))
        LOG.warning("notify: %s attempt %d/%d failed: %s", url, attempt, attempts, error)
        if attempt < attempts:
            sleep(delay)
            delay *= 2
    LOG.error("notify: giving up on %s after %d attempts", url, attempts)
    return False
