"""The one conversation type: messages up to the reviewed answer, the answer, and the question asked.

Records, eval items, the assembler, the persona and `spt review` all speak it. A conversation is an
optional system message, then user and assistant turns alternating, ending with the user turn the
reviewed response answers; earlier assistant turns are part of the conversation, not reviewed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from splitpersona.config import StrictModel

Role = Literal["system", "user", "assistant"]
Elicitation = Literal["hp", "ur"]  # hp: the review continues the reviewed turn; ur: a new user turn asks for it


class Message(StrictModel):
    role: Role
    content: str


class TurnOrderError(ValueError):
    def __init__(self, index: int, message: str):
        super().__init__(f"message {index}: {message}")
        self.index, self.detail = index, message


def check_turns(messages: Sequence[Message]) -> None:
    """Optional system first, then user/assistant alternating, ending in user; the error names the index."""
    roles = [m.role for m in messages]
    start = 1 if roles[:1] == ["system"] else 0
    for i in range(start, len(roles)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != want:
            raise TurnOrderError(i, f"role {roles[i]!r} where {want!r} is due (roles {roles}: [system], then "
                                 "user and assistant alternating, ending in user)")
    if len(roles) == start or roles[-1] != "user":
        raise TurnOrderError(max(0, len(roles) - 1), f"the conversation must end with the user turn the reviewed "
                             f"response answers (roles {roles})")


def as_messages(messages: Sequence[Message | dict]) -> list[Message]:
    """Validated messages in turn order (dicts with role and content are accepted)."""
    msgs = [m if isinstance(m, Message) else Message.model_validate(m) for m in messages]
    check_turns(msgs)
    return msgs


def _history_alternates(history: list[Message]) -> list[Message]:
    check_turns([*history, Message(role="user", content="")])
    return history


History = Annotated[list[Message], AfterValidator(_history_alternates)]  # earlier turns, before the last user turn


def build_messages(system: str | None, user: str, history: Sequence[Message] = ()) -> list[Message]:
    """System prompt (an empty one is none), earlier turns, the last user message: in turn order."""
    head = [Message(role="system", content=system)] if system else []
    msgs = head + list(history) + [Message(role="user", content=user)]
    check_turns(msgs)
    return msgs


class Conversation(StrictModel):
    """One conversation to review: what `spt review --conversation FILE.json` reads.

    `response` is the main model's answer to the last user message; `intervention` (optional) is
    what the persona is asked after the split token.
    """

    messages: list[Message]
    response: str
    intervention: str | None = Field(None, description="Default: the persona's default intervention.")

    @field_validator("messages")
    @classmethod
    def _turn_order(cls, messages: list[Message]) -> list[Message]:
        try:
            check_turns(messages)
        except TurnOrderError as e:  # located at the offending message's role, like a field error
            detail = InitErrorDetails(type=PydanticCustomError("turn_order", e.detail), loc=(e.index, "role"),
                                      input=messages[e.index].role if messages else None)
            raise ValidationError.from_exception_data(cls.__name__, [detail]) from None
        return messages
