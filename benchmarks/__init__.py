"""Development instruments, outside the installed package: the benchmark and the GPU check."""
