"""What the provider and the solver share: Inspect's messages as ours and back, and model work off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
from inspect_ai.model import ChatMessage, ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

from splitpersona.conversation import Message, as_messages

T = TypeVar("T")
_MODEL = threading.Lock()  # the provider and the solvers share models, and adapter switches are global to one


async def on_model(fn: Callable[[], T]) -> T:
    """Run blocking model work in a thread, one at a time, so the event loop (display, other samples) keeps going."""

    def locked() -> T:
        with _MODEL:
            return fn()

    return await anyio.to_thread.run_sync(locked)


def to_messages(chat: Sequence[ChatMessage], where: str) -> list[Message]:
    """Inspect's chat messages as a conversation ending in the user turn; `where` names the caller in errors."""
    for i, m in enumerate(chat):
        if m.role not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: message {i} has role {m.role!r}; the persona reads system, user and "
                             "assistant turns only")
    try:
        return as_messages([Message(role=m.role, content=m.text) for m in chat])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def to_chat(messages: Sequence[Message]) -> list[ChatMessage]:
    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    return [kinds[m.role](content=m.content) for m in messages]
