"""Planning for the machine: dry runs, ahead-of-time TPU plans, the CPU host allocator."""
