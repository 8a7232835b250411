"""The only modules that do network I/O: Vault, the issuer, SMTP, webhooks."""
