"""Every query the shipped dashboards and rules contain, and how to run them for real."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tests.servers import REPO

DASHBOARDS = REPO / "grafana" / "dashboards"
RULES = REPO / "observability" / "prometheus" / "rules"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "datasources.yml"
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)


@dataclass(frozen=True)
class Query:
    """One query: where it lives, its datasource uid, and its text as shipped."""

    where: str
    datasource: str
    expr: str

    @property
    def variables(self) -> set[str]:
        return variables_in(self.expr)


def variables_in(text: str) -> set[str]:
    return {a or b for a, b in _VARIABLE.findall(text)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $name / ${name} with concrete values; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no test value for variable ${name} in: {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def label_values_selector(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` -> (selector, label)."""
    match = _LABEL_VALUES.match(query)
    if not match:
        raise ValueError(f"not a label_values(...) query: {query}")
    return match.group(1).strip(), match.group(2)


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed children included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _uid(ref: Any) -> str:
    return ref.get("uid", "") if isinstance(ref, dict) else str(ref or "")


def panel_queries(name: str, dashboard: dict[str, Any]) -> list[Query]:
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            uid = _uid(target.get("datasource")) or _uid(panel.get("datasource"))
            where = f"{name} / {panel.get('title')} / {target.get('refId')}"
            found.append(Query(where, uid, target["expr"]))
    return found


def exemplar_queries() -> list[Query]:
    """The panel queries whose dots are exemplars (`"exemplar": true` on the target)."""
    found = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("exemplar"):
                    uid = _uid(target.get("datasource")) or _uid(panel.get("datasource"))
                    where = f"{name} / {panel.get('title')} / {target.get('refId')}"
                    found.append(Query(where, uid, target["expr"]))
    return found


def variable_queries(name: str, dashboard: dict[str, Any]) -> list[Query]:
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        found.append(Query(f"{name} / ${variable['name']}", _uid(variable["datasource"]), text))
    return found


def rule_queries() -> list[Query]:
    found = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                found.append(Query(f"{path.name} / {name}", "prometheus", rule["expr"]))
    return found


def rules(kind: str) -> list[dict[str, Any]]:
    """All rules of `kind` ("alert" or "record") across the shipped rule files."""
    return [
        rule
        for path in sorted(RULES.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def datasources() -> dict[str, dict[str, Any]]:
    """Provisioned datasources by uid."""
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return {source["uid"]: source for source in provisioned}
