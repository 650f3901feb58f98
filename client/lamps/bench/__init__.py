"""`lamps bench`: replay a trace against a running system and measure it as `lamps simulate` does.

`workload` turns a trace's arrivals into replayed requests, `runner` sends them at their arrival
times through the SDK and records what each client saw, `results` summarizes those records in the
shape of the simulator's results (with `source: live`), and `cli` is the command.
"""
