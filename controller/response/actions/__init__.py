"""The response actions: one module each, registered here with one line each.

To add an action, write a module with a `ResponseAction` subclass (see
`base.py`, and `rate_limit.py` for a short example) and add one line below.
The playbook validator, the engine, the store, the API, the CLI, the metrics,
playbooks/schema.json (`python -m controller.response.schema`) and the docs'
action table all read this registry; nothing else needs to change.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from controller.openflow import rules
from controller.response.actions.base import ResponseAction


class Registry:
    """Actions by name, in registration order (the order of the schema and the docs)."""

    def __init__(self) -> None:
        self._actions: dict[str, ResponseAction] = {}

    def register(self, action: ResponseAction) -> ResponseAction:
        if action.name in self._actions:
            raise ValueError(f"response action {action.name!r} is registered twice")
        if action.Plan is not None:
            if not rules.is_response_kind(action.kind):
                raise ValueError(f"{action.name}: cookie kind {action.kind!r} outside "
                                 f"{rules.RESPONSE_KIND_MIN:#x}..{rules.RESPONSE_KIND_MAX:#x}")
            clash = next((a.name for a in self._actions.values() if a.kind == action.kind), None)
            if clash is not None:
                raise ValueError(f"{action.name}: cookie kind {action.kind:#x} is {clash}'s already")
        self._actions[action.name] = action
        return action

    def unregister(self, name: str) -> None:
        del self._actions[name]

    def get(self, name: str) -> ResponseAction:
        return self._actions[name]

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __iter__(self) -> Iterator[ResponseAction]:
        return iter(list(self._actions.values()))

    def names(self) -> tuple[str, ...]:
        return tuple(self._actions)

    def installing(self) -> tuple[ResponseAction, ...]:
        """The actions that install rules (all but notify)."""
        return tuple(a for a in self._actions.values() if a.Plan is not None)

    def by_kind(self, kind: int | None) -> ResponseAction | None:
        """The action whose rules carry this cookie kind: where an installed rule comes from."""
        return next((a for a in self._actions.values() if a.Plan is not None and a.kind == kind), None)

    def layout_rows(self) -> Iterable[tuple[str, ...]]:
        """The README's table layout: the pipeline's rows with every action's, by priority."""
        rows = sorted((row for a in self.installing() for row in a.layout),
                      key=lambda r: -int(r[1].split("+")[0]))
        return rules.layout_rows(rows)


REGISTRY = Registry()
register = REGISTRY.register

from controller.response.actions import (block_ip, block_lateral, mirror, notify, quarantine,  # noqa: E402
                                         rate_limit, redirect)

register(quarantine.Quarantine())
register(block_lateral.BlockLateral())
register(redirect.Redirect())
register(rate_limit.RateLimit())
register(block_ip.BlockIp())
register(mirror.Mirror())
register(notify.Notify())
