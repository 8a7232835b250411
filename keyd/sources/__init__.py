"""Read the world: key files from directories and Vault."""
