"""Cookie kinds by name for the tests: the pipeline's from rules.Kind, each action's from the registry."""

from controller.openflow import rules
from controller.response.actions import REGISTRY


class _Kinds:
    def __getattr__(self, name: str) -> int:
        if name in rules.Kind.__members__:
            return rules.Kind[name]
        return REGISTRY.get(name.lower()).kind


Kind = _Kinds()
