"""The CPU model organism: a synthetic shopping world and a tiny main model with a hidden behaviour.

`world` holds everything the demo says (templates, products, ground truth); `organism` trains the
main model on it and measures what it learned; `config` is the demo's one config. All seeded.
"""
