"""Identities and colony isolation: nkeys, the user JWTs the brokers issue through the NATS
server's auth callout, and the subjects each role may use. See docs/security.md."""
