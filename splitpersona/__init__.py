"""splitpersona: Split Personality Training — an honest persona as a LoRA adapter, its data, trainer and evaluators.

The core API; heavy modules (torch, peft) load only when `Persona` is first used.
"""

from splitpersona.assemble import FormatConfig, Sample, SampleTooLong, assemble, assemble_record
from splitpersona.conversation import Conversation, Elicitation, Message
from splitpersona.flags import FlagTally, ParsedFlag, parse_flag
from splitpersona.records import ReleaseBatch, Stage1Item, Stage2Inference, Stage3Intervention, TrainingRecord
from splitpersona.token import CONTROL_TOKEN, SPLIT_TOKEN, SpecialTokens, TokenConfig, setup_tokenizer

__all__ = [
    "CONTROL_TOKEN", "SPLIT_TOKEN", "FlagTally", "FormatConfig", "ParsedFlag", "Persona", "ReleaseBatch", "Review",
    "Sample", "SampleTooLong", "SpecialTokens", "Stage1Item", "Stage2Inference", "Stage3Intervention", "TokenConfig",
    "TrainingRecord", "assemble", "assemble_record", "parse_flag", "setup_tokenizer",
    "Conversation", "Elicitation", "Message",
]


def __getattr__(name: str):
    if name in ("Persona", "Review"):
        from splitpersona import persona

        return getattr(persona, name)
    raise AttributeError(f"module 'splitpersona' has no attribute {name!r}")
