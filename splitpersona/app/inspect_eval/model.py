"""`spt/<run_dir>`: a persona run's main model (adapter off) as an Inspect model.

Each answer's `splitpersona.persona.Answer` (its ids and KV cache) is kept under the id of the
assistant message it became, so that `spt_review` reviews that message on the main model's own
cache. Answers no review asks for are dropped oldest first beyond `keep_answers`: a cache per
sample would otherwise pile up in tasks without a review.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspect_ai.model import ChatCompletionChoice, ChatMessage, ChatMessageAssistant, GenerateConfig, ModelAPI
from inspect_ai.model import ModelOutput, ModelUsage
from inspect_ai.tool import ToolChoice, ToolInfo

from splitpersona.app.inspect_eval._chat import on_model, to_messages
from splitpersona.generation import Sampling
from splitpersona.persona import Answer, Persona


class SPTModelAPI(ModelAPI):
    """Answers through `Persona.answer`; model args (`-M`) are `Persona.load`'s: base_model, dtype, device, ..."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        base_model: str | None = None,
        keep_answers: int = 16,
        **persona_options: Any,
    ) -> None:
        super().__init__(model_name, base_url, api_key, [], config)
        self.run_dir = Path(model_name)
        self.persona = Persona.load(self.run_dir, base_model, **persona_options)
        self.keep_answers = keep_answers
        self.answers: dict[str, Answer] = {}

    def max_connections(self) -> int:
        return 1  # one local model: concurrent samples would only queue for it

    async def generate(
        self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice, config: GenerateConfig
    ) -> ModelOutput:
        where = f"spt/{self.model_name}"
        if tools:
            raise ValueError(f"{where}: the main model takes no tools, got {[t.name for t in tools]}")
        messages = to_messages(input, where)
        max_tokens = config.max_tokens or self.persona.max_new_tokens
        sampling = None
        if config.temperature:  # None or 0: greedy, as `spt eval run` decodes
            sampling = Sampling(config.temperature, config.top_p or 1.0, config.top_k or 0)

        def answer() -> Answer:
            if sampling is not None and config.seed is not None:
                import torch

                torch.manual_seed(config.seed)
            stop = config.stop_seqs or ()
            return self.persona.answer(messages, max_new_tokens=max_tokens, sampling=sampling, stop=stop)

        ans = await on_model(answer)
        message = ChatMessageAssistant(content=ans.text, model=self.model_name, source="generate")
        self.answers[message.id] = ans
        while len(self.answers) > self.keep_answers:
            del self.answers[next(iter(self.answers))]
        prompt, written = ans.prompt_tokens, len(ans.ids) - ans.prompt_tokens
        return ModelOutput(
            model=self.model_name,
            choices=[ChatCompletionChoice(message=message, stop_reason="max_tokens" if written >= max_tokens else "stop")],
            usage=ModelUsage(input_tokens=prompt, output_tokens=written, total_tokens=prompt + written),
        )
