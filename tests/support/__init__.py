"""Helpers the tests share: tiny models, record writers, loopback servers, the training kit."""
