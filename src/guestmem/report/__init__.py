"""Reports: the conversion matrix (semantics.md §2) and the HTML report, computed from the model."""
