"""proxy: a cloud-native network proxy on trio.

Layout (one module, one job):
  cli          command line: run, check, stop
  config/      YAML/JSON -> frozen typed model, every error with its path and line
  server       the worker root: nursery tree, signals, graceful drain
  log          structured key=value / JSON logging
  stats        cheap counters and gauges
  network/     listener (bind, batched accept), relay (splice + copy), tcp_proxy
  upstream/    cluster, host, load balancers (pure)
  native       whether the mypyc-compiled hot path or its source runs
"""

from proxy import native as _native  # noqa: F401 - first: decides whether the compiled build runs

__version__ = "0.1.0"
