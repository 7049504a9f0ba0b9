"""Sans-IO protocol codecs: bytes in, events out, no trio imports (see DESIGN.md, layout)."""
