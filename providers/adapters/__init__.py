"""Per-provider, per-model adapters: named request, header and answer edits between
the unified form and an upstream's wire form (``chain`` says which and in what order)."""

from providers.adapters.chain import (FAMILY_DEFAULTS, NO_ADAPTERS, ORDER, REGISTRY, Chain, ProviderAdapters,
                                      chain_of, for_protocol, passes_through, sent_max_tokens)

__all__ = ["FAMILY_DEFAULTS", "NO_ADAPTERS", "ORDER", "REGISTRY", "Chain", "ProviderAdapters", "chain_of",
           "for_protocol", "passes_through", "sent_max_tokens"]
