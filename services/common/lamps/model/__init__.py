"""Pure models shared by the live system and the simulator: the GPU cost model and its profiles,
the paged-KV engine model, tool types and workload traces. No clocks and no network; the only I/O
is `lamps.model.workload` reading a trace file."""
