"""`push demo`: the whole system on one machine, for a person to try.

A local bucket, sample apps built with `push release`, the push server on 127.0.0.1 in
no-auth mode, and three pulld agents, each with its own sandbox root whose units the
sandbox supervisor runs. Ctrl-C stops everything it started.
"""
