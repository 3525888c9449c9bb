"""Published evaluation protocols: ground-truth importers and the protocol runner."""
