"""appstack's policy pack (run by the engine: ``pulumi preview --policy-pack policy``)."""
