"""Integrations with training frameworks, each imported only on request:
``cockpit_optim.integrations.lightning`` (extra ``[lightning]``) and
``cockpit_optim.integrations.transformers`` (extra ``[transformers]``)."""
