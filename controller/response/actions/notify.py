"""notify: log the decision, and POST the alert and the actions to a webhook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yaml.nodes import Node

from controller.response import validation as v
from controller.response.actions.base import ResponseAction


@dataclass(frozen=True)
class NotifyParams:
    log: bool = v.param(v.Bool(), True)
    webhook: str | None = v.param(v.Url(), None)
    timeout_s: float = v.param(v.Number(0.1, 60), 5.0)
    retries: int = v.param(v.Int(0, 10), 3)


class Notify(ResponseAction):
    """Installs nothing (no NotifyPlan): the engine turns it into notify jobs, delivered off the lock."""

    name = "notify"
    summary = "log, and optionally POST the alert and actions to a webhook"
    Params = NotifyParams
    nullable = True
    expires = False
    needs_device = False
    schema_extra = {"dependentRequired": {"timeout_s": ["webhook"], "retries": ["webhook"]}}
    params_doc = ("`log`: bool, default `true`; `webhook`: `http://` or `https://` URL; `timeout_s`: 0.1..60, "
                  "default 5; `retries`: 0..10, default 3")
    effect_doc = ("log the decision, and POST the alert and the actions as JSON to the webhook without blocking "
                  "the controller. `timeout_s` and `retries` need a `webhook`; `log: false` without a webhook is "
                  "an error")

    def check(self, c: v.Checker, node: Node, path: str, values: dict[str, Any]) -> dict[str, Any]:
        raw = {k: v_ for k, v_ in values.items()}
        if raw["webhook"] is None:
            for key in ("timeout_s", "retries"):
                if v.child(node, key) is not None:
                    c.fail(v.child(node, key), v.join(path, key),
                           f"{key} applies to a webhook; add 'webhook' or remove it")
            if not raw["log"]:
                c.fail(node, path, "notify does nothing: set log: true or give a webhook")
        return values

    def jobs(self, params: NotifyParams) -> list[dict[str, Any]]:
        """One delivery per destination: the log, and the webhook."""
        return ([{"destination": "log", "webhook": None, "timeout_s": params.timeout_s, "retries": params.retries}]
                if params.log else []) + \
            ([{"destination": params.webhook, "webhook": params.webhook, "timeout_s": params.timeout_s,
               "retries": params.retries}] if params.webhook else [])
