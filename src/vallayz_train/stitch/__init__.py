"""``vallayz bench stitch``: stitching MiniLM-L6 and multilingual-e5-small on English lines."""
