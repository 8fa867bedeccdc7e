"""Dynamic providers (Migration, SmokeTest, GeneratedSecret) and the runners they use."""
