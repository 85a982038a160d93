"""The PDL contract: one case list (cases.py), checked on TRL here and on Axolotl in tests/integrations."""
