"""The operator CLI: ``appstack status | history | rollback | deploy | maintenance``."""
