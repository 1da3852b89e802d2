"""VDGD's settings: the released defaults (``experiments/eval/sampling/vdgd.py`` and
``generate_desc_logits.py`` in Sreyan88/VDGD)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError

REDUCTIONS = ("min", "avg", "sum")
CHOICES = ("sample", "greedy")
PREFIXES = ("inline", "turn", "none")

#: the release's description prompt; ``{question}`` is the user's question
RELEASED_DESCRIBE_PROMPT = (
    "I have been given an image to complete the task described as: {question}.\n\nTo help me complete the task, "
    "describe the given image in detail. In case of real-world scenes, please include all foreground and background "
    "objects in the description, their properties (like color, shape, etc.), their relations with other objects, "
    "their count, and all other components in the image. In case of non-real-world scenes, like charts, graphs, "
    "tables, etc., please describe the table, mention all numbers (if any), mention the written text, and all other "
    "details."
)
#: the release's answer prompt (one user turn)
RELEASED_ANSWER_PROMPT = "The input image is described as follows: {description} {question}"


@dataclass
class VDGDConfig(ContrastiveConfig):
    """``alpha`` is unused (VDGD has no negative branch); 0 turns the rerank off (plain decoding after
    the description). As released: the description prompt carries the question and may run to 1,024
    tokens; the answer prompt is one turn "The input image is described as follows: <description>
    <question>"; each answer token is *drawn* from the softmax of the description scores of the
    candidates that top-p 0.5 at temperature 0.5 keeps (``choice="sample"``). ``choice="greedy"`` is
    mmeff's deterministic variant: the ``beta`` plausibility cut, then the generation config's own
    greedy or sampled choice. ``beta`` applies only there."""

    describe_prompt: str = field(default=RELEASED_DESCRIBE_PROMPT,
                                 metadata={"help": "step-1 prompt; {question} is replaced by the question"})
    description_tokens: int = field(default=1024, metadata={"help": "length limit of the description"})
    reduce: str = field(default="min", metadata={"help": "over description steps: min KL | avg | sum"})
    prefix: str = field(default="inline", metadata={
        "help": "inline: the release's one-turn answer prompt | turn: the description as an earlier chat turn | "
                "none: the question alone"})
    choice: str = field(default="sample", metadata={"help": "sample (as released) | greedy (beta cut, then argmax)"})
    top_p: float = field(default=0.5, metadata={"help": "choice=sample: the candidates' nucleus mass"})
    temperature: float = field(default=0.5, metadata={"help": "choice=sample: temperature of the nucleus"})

    def validate(self) -> None:
        super().validate()
        if self.separate:
            raise ConfigError("VDGDConfig.separate does not apply: VDGD decodes one branch")
        if not isinstance(self.describe_prompt, str) or not self.describe_prompt.strip():
            raise ConfigError("VDGDConfig.describe_prompt must be a non-empty string")
        if isinstance(self.description_tokens, bool) or not isinstance(self.description_tokens, int) or (
                self.description_tokens < 1):
            raise ConfigError(f"VDGDConfig.description_tokens must be an int >= 1, got {self.description_tokens!r}")
        for name, allowed in (("reduce", REDUCTIONS), ("prefix", PREFIXES), ("choice", CHOICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"VDGDConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("top_p", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= (
                    1 if name == "top_p" else float("inf")):
                bound = "(0, 1]" if name == "top_p" else "> 0"
                raise ConfigError(f"VDGDConfig.{name} must be a number {bound}, got {value!r}")

    def describe_for(self, question: str) -> str:
        return self.describe_prompt.replace("{question}", question)
