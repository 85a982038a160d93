"""Integrations of PDL into other training frameworks.

`pdl_plugin.integrations.axolotl` is the Axolotl integration (`plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]`
plus `loss_type: pdl`; `axolotl pdl-freq`). Nothing is imported here, so importing this package never needs Axolotl.
"""
