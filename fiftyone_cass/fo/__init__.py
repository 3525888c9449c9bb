"""The FiftyOne layer: the model (`model`), labelling runs (`apply`, `labelling`), field claims,
folders, delegation, the demo, evaluation and its metrics, shard keys."""
