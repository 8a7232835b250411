"""Actions: decisions → side effects, driven by rows (docs/architecture.md §1).

``alerts`` decides which alerts are due and writes alert + delivery rows in
the caller's transaction (a transactional outbox); ``deliver`` drains that
outbox over SMTP and webhooks; ``retry`` is keyd's one backoff helper.
"""
