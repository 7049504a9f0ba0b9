"""Sans-IO protocol codecs: bytes in, events out, no trio imports (see DESIGN.md, layout).

The HTTP/1.1 codec modules and the HTTP/2 codec's HPACK coders and head translation are among
the modules mypyc compiles from this same source when built (`scripts/build-native`, run by
`scripts/setup`); `proxy.native` decides whether the build or the source runs.
"""
