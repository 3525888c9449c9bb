"""fiftyone_cass: training-free open-vocabulary semantic segmentation (CASS + CDAM) for FiftyOne."""

__version__ = "0.1.0"
