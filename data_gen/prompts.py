"""Versioned prompt sets: `data_gen/prompts/<version>/`, loaded and checked as a whole.

A version directory holds the shared system prompt (`base.md`), one template per task
(`stage1.md`, `stage3_<type>.md`, `filter.md`, `propose_criteria.md`), one brief per topic
(`topics/<topic>.md`) and `topics.yaml` (foci, each topic's legal foci, the domain rotation).
Templates use `{{name}}` fields: plain `str.format` would trip over the braces in JSON examples and
`string.Template` over dollar amounts. A change to any file changes the request hashes, so a rerun
regenerates exactly what the new prompts affect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from splitpersona.data_gen.config import TOPICS
from splitpersona.io import DataError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
INTERVENTION_TYPES = ("split_personality", "honesty_scare")
_FIELD = re.compile(r"\{\{(\w+)\}\}")


def render(template: str, source: str = "<template>", **values: str) -> str:
    """Fill every `{{name}}`; a missing or unused value is an error naming the template."""
    wanted = set(_FIELD.findall(template))
    if wanted - values.keys():
        raise DataError(source, f"template fields without values: {sorted(wanted - values.keys())}")
    if values.keys() - wanted:
        raise DataError(source, f"values for fields the template lacks: {sorted(values.keys() - wanted)}")
    return _FIELD.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class PromptSet:
    version: str
    root: Path
    base: str
    stage1: str
    stage3: dict[str, str]
    filter: str
    propose: str
    briefs: dict[str, str]
    topic_foci: dict[str, list[str]]
    focus_questions: dict[str, str]
    domains: list[str]

    def foci_text(self, topic: str) -> str:
        return "\n".join(f"- `{f}` — {self.focus_questions[f]}" for f in self.topic_foci[topic])

    def system(self) -> str:
        return self.base

    def stage1_prompt(self, topic: str) -> str:
        return render(self.stage1, str(self.root / "stage1.md"), topic=topic, topic_brief=self.briefs[topic],
                      foci=self.foci_text(topic))

    def stage3_prompt(self, topic: str, intervention_type: str) -> str:
        return render(self.stage3[intervention_type], str(self.root / f"stage3_{intervention_type}.md"), topic=topic,
                      topic_brief=self.briefs[topic], foci=self.foci_text(topic))


@lru_cache(maxsize=8)
def load_prompts(version: str = "v1") -> PromptSet:
    root = PROMPTS_DIR / version
    if not root.is_dir():
        available = sorted(p.name for p in PROMPTS_DIR.iterdir() if p.is_dir())
        raise DataError(root, f"no prompt set {version!r}; available: {available}")

    def read(name: str) -> str:
        path = root / name
        if not path.is_file():
            raise DataError(path, "prompt file missing")
        return path.read_text(encoding="utf-8").strip() + "\n"

    catalogue = yaml.safe_load(read("topics.yaml"))
    questions: dict[str, str] = catalogue["focus_questions"]
    topic_foci: dict[str, list[str]] = catalogue["topic_foci"]
    for topic in TOPICS:
        if topic not in topic_foci:
            raise DataError(root / "topics.yaml", f"topic {topic!r} has no foci")
        unknown = set(topic_foci[topic]) - questions.keys()
        if unknown:
            raise DataError(root / "topics.yaml", f"topic {topic!r} uses foci without a question: {sorted(unknown)}")
    base = render(read("base.md"), str(root / "base.md"),
                  focus_questions="\n".join(f"- `{k}` — {v}" for k, v in questions.items()))
    return PromptSet(
        version=version,
        root=root,
        base=base,
        stage1=read("stage1.md"),
        stage3={t: read(f"stage3_{t}.md") for t in INTERVENTION_TYPES},
        filter=read("filter.md"),
        propose=read("propose_criteria.md"),
        briefs={t: read(f"topics/{t}.md") for t in TOPICS},
        topic_foci=topic_foci,
        focus_questions=questions,
        domains=list(catalogue["domains"]),
    )
