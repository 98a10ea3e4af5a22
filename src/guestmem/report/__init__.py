"""Reports: the conversion matrix (docs/semantics.md §2) and the HTML report, computed from the model."""
