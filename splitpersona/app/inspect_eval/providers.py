"""The `spt` model provider's registration, apart from its class so that registering imports no torch."""

from inspect_ai.model import ModelAPI, modelapi


@modelapi(name="spt")
def spt() -> type[ModelAPI]:
    from splitpersona.app.inspect_eval.model import SPTModelAPI

    return SPTModelAPI
