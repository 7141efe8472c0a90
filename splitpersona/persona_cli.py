def ask() -> None:
    """Ask a persona (placeholder)."""
    raise SystemExit("not implemented yet")


def review() -> None:
    """Review a conversation (placeholder)."""
    raise SystemExit("not implemented yet")
