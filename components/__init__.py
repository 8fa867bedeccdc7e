"""appstack: deploys multi-service systems and runs their runbooks (backup, migrate, smoke)."""
