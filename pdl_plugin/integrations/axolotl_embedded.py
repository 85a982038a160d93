"""Where `plugins: [pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin]` in existing YAMLs points; the
plugin lives in `pdl_plugin.integrations.axolotl.embedded`."""

from .axolotl.embedded import EmbeddedResourcesPlugin, embedded_dataset_jsonl, resolve_embedded_resources

__all__ = ["EmbeddedResourcesPlugin", "embedded_dataset_jsonl", "resolve_embedded_resources"]
