"""`python -m pdl_plugin.integrations.axolotl_cli CONFIG.yaml ...`, as earlier releases documented it: the command
lives in `pdl_plugin.integrations.axolotl.cli` (`axolotl pdl-freq`)."""

from .axolotl.cli import pdl_freq

__all__ = ["pdl_freq"]

if __name__ == "__main__":
    pdl_freq()
