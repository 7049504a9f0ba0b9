"""The admin API: HTTP/1.1 + JSON over a Unix socket (server), and the `proxy ctl` client."""
