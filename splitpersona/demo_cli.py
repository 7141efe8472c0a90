def demo() -> None:
    """CPU demo (placeholder)."""
    raise SystemExit("not implemented yet")
