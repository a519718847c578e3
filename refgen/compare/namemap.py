"""Name maps: a port keeps its own tensor names, a small TOML file says which reference tensor
each one is.

::

    # llama.cpp's graph names (the eval callback's), to refgen's
    [names]
    "inp_embd" = "hidden_states.layer0"
    "l_out-{i}" = "module.model.layers.{i}"
    "result_output" = "logits.all"

The key is a pattern over the port's names: ``{i}`` stands for a layer index and ``{p}`` for
a prompt index (digits); everything else is literal. The value is a refgen tensor name without
its ``prompt{p}.`` prefix, in which ``{i}`` may carry an offset (``hidden_states.layer{i+1}``:
decoder layer ``i``'s output is hidden state ``i + 1``). A pattern without ``{p}`` names tensors
of the one prompt the dump is for (``refgen compare --prompt N``, default 0).

Without a map, the port's names are refgen's own, with or without the ``prompt{p}.`` prefix.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from refgen.errors import CompareError

_PLACEHOLDER = re.compile(r"\{(i|p)\}")
_TARGET = re.compile(r"\{(i|p)(?:([+-])(\d+))?\}")
_PROMPT_PREFIX = re.compile(r"^prompt(\d+)\.(.+)$")


@dataclass(frozen=True)
class Rule:
    """One line of a map: a compiled port pattern and its refgen target."""

    pattern: str
    target: str
    regex: re.Pattern[str]

    def apply(self, name: str, prompt: int) -> tuple[int, str] | None:
        """``(prompt, refgen name without prefix)`` when *name* matches, else None."""
        match = self.regex.fullmatch(name)
        if match is None:
            return None
        values = {k: int(v) for k, v in match.groupdict().items()}
        prompt = values.get("p", prompt)

        def substitute(m: re.Match[str]) -> str:
            value = values.get(m.group(1), prompt if m.group(1) == "p" else 0)
            offset = int(m.group(3) or 0)
            return str(value + offset if m.group(2) != "-" else value - offset)

        return prompt, _TARGET.sub(substitute, self.target)


@dataclass(frozen=True)
class NameMap:
    """A port's names -> refgen's; :meth:`resolve` applies the first rule that matches."""

    rules: tuple[Rule, ...]
    source: str  # the file, for messages

    def resolve(self, name: str, prompt: int) -> tuple[int, str] | None:
        for rule in self.rules:
            found = rule.apply(name, prompt)
            if found is not None:
                return found
        return None


IDENTITY = NameMap((), "(refgen's own names)")


def resolve(names: NameMap, name: str, prompt: int) -> tuple[int, str] | None:
    """The reference tensor a port tensor stands for: ``(prompt, name without prefix)``.

    With rules, only they apply. Without (the identity map), ``prompt3.logits.last`` is prompt 3's
    and a bare ``logits.last`` is *prompt*'s."""
    if names.rules:
        return names.resolve(name, prompt)
    match = _PROMPT_PREFIX.match(name)
    if match is not None:
        return int(match.group(1)), match.group(2)
    return prompt, name


def load(path: Path) -> NameMap:
    """Read and check a map file; every mistake is a :class:`CompareError` naming the line."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CompareError(f"cannot read the name map {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CompareError(f"the name map {path} is not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"names"})
    table = data.get("names")
    if unknown or not isinstance(table, dict) or not table:
        raise CompareError(
            f'the name map {path} must have one table [names] of "port name" = "refgen name" '
            f"lines{f' (unknown keys {unknown})' if unknown else ''}; see the README's "
            "'For porters' section."
        )
    rules = []
    for pattern, target in table.items():
        if not isinstance(target, str) or not target:
            raise CompareError(
                f"{path}: names.{pattern!r} must be a refgen tensor name (a string), not {target!r}"
            )
        if target.startswith("prompt"):
            raise CompareError(
                f"{path}: names.{pattern!r} = {target!r}: write the refgen name without its "
                "'prompt{p}.' prefix (use {p} in the port's pattern, or --prompt N)"
            )
        used = set(_PLACEHOLDER.findall(pattern))
        for m in _TARGET.finditer(target):
            if m.group(1) not in used and m.group(1) == "i":
                raise CompareError(
                    f"{path}: names.{pattern!r} = {target!r} uses {{i}}, which the port's "
                    "pattern does not capture"
                )
        stray = re.sub(_TARGET, "", target)
        if "{" in stray or "}" in stray:
            raise CompareError(
                f"{path}: names.{pattern!r} = {target!r}: only {{i}}, {{i+N}}, {{i-N}} and {{p}} "
                "may stand in braces"
            )
        rules.append(Rule(pattern, target, _compile(path, pattern)))
    return NameMap(tuple(rules), str(path))


def _compile(path: Path, pattern: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(pattern)  # literal, name, literal, name, ...
    regex = ""
    seen: set[str] = set()
    for n, part in enumerate(parts):
        if n % 2 == 0:
            if "{" in part or "}" in part:
                raise CompareError(
                    f"{path}: the pattern {pattern!r} may hold only {{i}} and {{p}} in braces"
                )
            regex += re.escape(part)
        elif part in seen:
            raise CompareError(f"{path}: the pattern {pattern!r} holds {{{part}}} twice")
        else:
            seen.add(part)
            regex += f"(?P<{part}>[0-9]+)"
    return re.compile(regex)
