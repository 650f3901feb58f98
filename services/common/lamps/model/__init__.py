"""Pure models shared by the live system and the simulator: the GPU cost model and its profiles,
the paged-KV batch model, and workload traces. No I/O, no clocks."""
