def train() -> None:
    """Train a persona (placeholder until the trainer lands)."""
    raise SystemExit("not implemented yet")
