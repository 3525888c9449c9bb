"""The FiftyOne App: operators (`label_operators`, `eval_operators`), the panel (`iou_panel`), App support."""
