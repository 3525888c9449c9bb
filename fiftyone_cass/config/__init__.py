"""Settings declared once (`schema`: typed fields; `settings`: every labelling setting)."""
