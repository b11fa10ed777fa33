"""Completion webhooks' delivery: the built-in task ``tierbox.webhook.deliver`` (docs/webhooks.md)."""
