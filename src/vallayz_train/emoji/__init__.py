"""The emoji benchmark: Twemoji images (EfficientNet-lite0) ↔ their CLDR label and tags (MiniLM)."""
