"""Record schemas: the public SPT release's nested format, and our flat training record.

The release models keep unknown keys (`extra="allow"`) so a file read and written back loses
nothing; our generator writes the same format with a few added keys. The training record is
strict: it is what the trainer and evaluators consume, and a typo there must fail loudly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from splitpersona.config import StrictModel
from splitpersona.conversation import Conversation, History, Message, build_messages

Flag = Literal["PASS", "FAIL", "AMBIGUOUS"]
StoredFlag = Literal["PASS", "FAIL", "AMBIGUOUS", "ERROR"]
Variant = Literal["A", "B"]
Difficulty = Literal["easy", "medium", "hard", "FPT"]
DetectionDifficulty = Literal["easy", "medium", "hard", "NA"]


class _Release(BaseModel):
    model_config = ConfigDict(extra="allow")


class Stage1Metadata(_Release):
    alignment_issue_type: str
    difficulty: Difficulty
    intended_review_focus: str
    notes: str = ""


class Stage3Intervention(_Release):
    """One intervention on one (item, model, variant): the release's stage-3 tool output plus bookkeeping."""

    thought_process: str
    intervention_type: str
    selected_review_focus: str
    confidence: int
    I: str  # noqa: E741 - the release's own key
    R: str
    P: StoredFlag
    detection_difficulty_internal: DetectionDifficulty | str
    detection_difficulty_external: DetectionDifficulty | str
    faulty_data: bool
    tags: list[str] = Field(default_factory=list)
    id_numeric: int | None = None
    id_string: str | None = None
    batch_thinking: str | None = None
    stage_3_analysis: str | None = None
    generation_time: float | None = None
    model_used: str | None = None
    review_model_used: str | None = None
    num_stage_3_reviews_made: int | None = None
    stage_3_reviews_passed: bool | None = None
    stage_3_reviews_all_failed_due_to_overlong_context: bool | None = None
    error: str | None = None
    # Added by our generator (absent in the release): the trainer's system-prompt augmentations
    # may only touch samples whose verdict follows from the task and response alone.
    verdict_depends_on_system_prompt: bool | None = None
    review_mentions_system_prompt: bool | None = None


class Stage2Inference(_Release):
    """The target model's response to one variant, and the interventions on it."""

    S: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    string_length: int | None = None
    generation_time: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    thinking_enabled: bool | None = None
    tags: list[str] = Field(default_factory=list)
    interventions: dict[str, Stage3Intervention] = Field(default_factory=dict)


class Stage1Item(_Release):
    thought_process: str
    A: str
    B: str | None = None
    T: str
    metadata: Stage1Metadata
    inferences: dict[str, dict[Variant, Stage2Inference]] = Field(default_factory=dict)


class ReleaseBatch(_Release):
    """One batch file (`batch_<topic>_<timestamp>_batch_<NNN>.json[.xz]`) at any stage."""

    batch_id: str
    generation_timestamp: str
    model_used: str
    stage: int
    topic: str
    data: list[Stage1Item]
    project_feedback: str | None = None


class TrainingRecord(StrictModel):
    """One persona training/eval sample: a conversation, an intervention, and the honest review of it.

    The conversation is `system`, `history`, `user` (`messages`): the system prompt and the last
    user turn stay fields of their own because the augmentations and eval conditions change them.
    """

    id: str
    topic: str
    model: str
    variant: Variant
    intervention_key: str
    intervention_type: str
    system: str | None
    user: str
    response: str
    intervention: str
    review: str
    flag: Flag
    history: History = Field(
        default_factory=list, description="Earlier user and assistant turns, between the system prompt and `user`."
    )
    confidence: int | None = None
    tags: list[str] = Field(default_factory=list)
    source: str
    alt_system: str | None = Field(
        default=None, description="The other variant's system prompt (B for an A record, A for a B record)."
    )
    verdict_depends_on_system_prompt: bool | None = None
    review_mentions_system_prompt: bool | None = None

    @property
    def messages(self) -> list[Message]:
        return build_messages(self.system, self.user, self.history)

    def messages_with_system(self, system: str | None) -> list[Message]:
        """The conversation under another system prompt (None: without one)."""
        return build_messages(system, self.user, self.history)

    @property
    def conversation(self) -> Conversation:
        return Conversation(messages=self.messages, response=self.response, intervention=self.intervention)
