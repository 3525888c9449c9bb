"""FiftyOne integrations: importers, evaluation, plugin operators (import submodules explicitly)."""
