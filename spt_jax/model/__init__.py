"""The OLMo-style decoder, its attention kernels, sizes and FLOP formulas, and its sharding over the mesh."""
