"""Development tooling: the local demo and the real-process helpers the tests use."""
