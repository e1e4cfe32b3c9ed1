"""A tiny reader for the Bicep in ``infra/`` — enough for structural tests, no Bicep CLI.

It understands single-quoted strings (with ``\\'`` escapes), ``//`` and ``/* */``
comments, balanced ``{}``/``[]``/``()``, ``param``/``var``/``module``/``output``
declarations, and ``key: value`` object bodies. It does not evaluate Bicep; tests
compare the text against the app instead. Keep ``infra/`` in the plain style it reads:
one ``key: value`` per line, objects and arrays on their own lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

_OPEN = {"{": "}", "[": "]", "(": ")"}
_CLOSE = {v: k for k, v in _OPEN.items()}


def strip_comments(text: str) -> str:
    """``text`` without comments; strings are kept intact (``//`` in URLs survives)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            j = _string_end(text, i)
            out.append(text[i:j])
            i = j
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """Index just past the single-quoted string starting at ``start``."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "'":
            return i + 1
        i += 1
    raise ValueError(f"unterminated string at {start}")


def balanced(text: str, start: int) -> str:
    """The bracketed text starting at ``text[start]`` (an opening bracket), inclusive."""
    stack: list[str] = []
    i = start
    while i < len(text):
        c = text[i]
        if c == "'":
            i = _string_end(text, i)
            continue
        if c in _OPEN:
            stack.append(_OPEN[c])
        elif c in _CLOSE:
            if not stack or stack.pop() != c:
                raise ValueError(f"unbalanced {c!r} at {i}")
            if not stack:
                return text[start : i + 1]
        i += 1
    raise ValueError(f"unclosed bracket at {start}")


def expression(text: str, start: int) -> str:
    """The expression starting at ``start``: up to a newline at bracket depth 0 that
    is not followed by a ``?``/``:`` continuation line (multi-line ternaries)."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "'":
            i = _string_end(text, i)
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif c == "\n" and depth == 0:
            rest = text[i + 1 :].lstrip()
            if not rest.startswith(("?", ":")):
                return text[start:i].strip()
        i += 1
    return text[start:].strip()


def literal(raw: str) -> Any:
    """A Bicep literal as Python (str, int, bool, [] or {}), else the raw text."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == "'" and raw[-1] == "'" and _string_end(raw, 0) == len(raw):
        body = raw[1:-1]
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), body)
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if raw in ("true", "false"):
        return raw == "true"
    if re.fullmatch(r"\[\s*\]", raw):
        return []
    if re.fullmatch(r"\{\s*\}", raw):
        return {}
    return raw


def object_body(block: str) -> dict[str, str]:
    """``key: value`` pairs at the top level of an object literal ``{ ... }`` (raw values)."""
    assert block.startswith("{") and block.endswith("}"), block[:40]
    inner = block[1:-1]
    pairs: dict[str, str] = {}
    i = 0
    key_re = re.compile(r"\s*('?[\w$.{}-]+'?)\s*:\s*")
    while i < len(inner):
        m = key_re.match(inner, i)
        if not m:
            i += 1
            continue
        key = m[1].strip("'")
        value = expression(inner, m.end())
        pairs[key] = value
        i = m.end() + len(value)
    return pairs


def objects(expr: str, key: str = "name") -> list[dict[str, str]]:
    """Every object literal in ``expr`` that has ``key``, outermost first (not nested)."""
    found: list[dict[str, str]] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "'":
            i = _string_end(expr, i)
            continue
        if c == "{":
            block = balanced(expr, i)
            body = object_body(block)
            if key in body:
                found.append(body)
                i += len(block)
                continue
        i += 1
    return found


@dataclass
class Param:
    name: str
    type: str
    default: str | None  # raw Bicep text, or None when the parameter is required
    decorators: list[str] = field(default_factory=list)

    @property
    def secure(self) -> bool:
        return any(d.startswith("@secure(") for d in self.decorators)

    @property
    def default_value(self) -> Any:
        return None if self.default is None else literal(self.default)


@dataclass
class BicepFile:
    path: Path
    text: str  # comments stripped

    @classmethod
    def load(cls, relative: str) -> BicepFile:
        path = INFRA / relative
        return cls(path, strip_comments(path.read_text(encoding="utf-8")))

    def params(self) -> dict[str, Param]:
        found: dict[str, Param] = {}
        decorators: list[str] = []
        lines = self.text.splitlines(keepends=True)
        offset = 0
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("@"):
                decorators.append(stripped)
            elif m := re.match(r"param\s+(\w+)\s+(\w+)(\s*=\s*)?", stripped):
                default = None
                if m[3]:
                    start = offset + line.index(stripped) + m.end()
                    default = expression(self.text, start)
                found[m[1]] = Param(m[1], m[2], default, decorators)
                decorators = []
            elif (
                stripped
                and not stripped.startswith(("[", "]", "'", "}", "{", ")"))
                # a decorator spanning lines (@allowed([...])) keeps its continuation lines
                and not (decorators and decorators[-1].count("(") > decorators[-1].count(")"))
            ):
                decorators = []
            offset += len(line)
        return found

    def var(self, name: str) -> str:
        m = re.search(rf"^var\s+{name}\s*=\s*", self.text, re.M)
        assert m, f"{self.path.name}: no `var {name}`"
        return expression(self.text, m.end())

    def declaration(self, keyword: str, name: str) -> str:
        """The body ``{...}`` of ``resource|module <name> ... = {`` (or ``= if (...) {``)."""
        m = re.search(
            rf"^{keyword}\s+{name}\s+'[^']*'[^\n]*?=\s*(if\s*\(.*?\)\s*)?\{{", self.text, re.M
        )
        assert m, f"{self.path.name}: no `{keyword} {name}`"
        return balanced(self.text, m.end() - 1)

    def resources(self) -> dict[str, tuple[str, str]]:
        """symbolic name -> (type, api version) for every ``resource`` declaration."""
        return {
            m[1]: (m[2], m[3])
            for m in re.finditer(r"^resource\s+(\w+)\s+'([\w./]+)@([\w-]+)'", self.text, re.M)
        }

    def modules(self) -> dict[str, str]:
        """symbolic name -> relative path for every ``module`` declaration."""
        return {m[1]: m[2] for m in re.finditer(r"^module\s+(\w+)\s+'([^']+)'", self.text, re.M)}

    def outputs(self) -> dict[str, str]:
        found = {}
        for m in re.finditer(r"^output\s+(\w+)\s+\w+\s*=\s*", self.text, re.M):
            found[m[1]] = expression(self.text, m.end())
        return found


def all_bicep() -> list[BicepFile]:
    return [
        BicepFile(p, strip_comments(p.read_text(encoding="utf-8")))
        for p in sorted(INFRA.rglob("*.bicep"))
    ]


def identifiers(expr: str) -> set[str]:
    """Bare identifiers in an expression, ignoring string contents (but not ``${...}``)."""
    names: set[str] = set()
    i = 0
    while i < len(expr):
        if expr[i] == "'":
            end = _string_end(expr, i)
            for interp in re.findall(r"\$\{([^}]*)\}", expr[i:end]):
                names |= identifiers(interp)
            i = end
            continue
        m = re.match(r"[A-Za-z_]\w*", expr[i:])
        if m:
            # property access (`a.b`) keeps only the root symbol
            if i == 0 or expr[i - 1] != ".":
                names.add(m[0])
            i += len(m[0])
        else:
            i += 1
    return names
