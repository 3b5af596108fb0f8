"""Alert channels: each a small notifier (``wants`` / ``send`` / ``close``) driven by one dispatcher loop."""
