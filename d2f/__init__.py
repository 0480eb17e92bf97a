"""d2f-serve: one installed namespace over the repository's folders (d2f.engine = engine/, d2f.server =
server/, d2f.refurbish = refurbish/, d2f.bench = bench/), so no top-level name can clash with another package.

Layering: engine imports none of the others; server and refurbish import engine; bench imports all three.
"""
