"""Integrations of PDL into other training frameworks.

`pdl_plugin.integrations.axolotl.PDLPlugin` is the Axolotl plugin (`plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]`
plus `loss_type: pdl`); `pdl_plugin.integrations.axolotl_cli` is the `axolotl pdl-freq` subcommand. Nothing is imported
here, so importing this package never needs Axolotl.
"""
