"""The spoken-digits benchmark: real recordings (FSDD) ↔ handwritten digit images
(scikit-learn's ``load_digits``) ↔ the digit words (MiniLM), paired by label."""
