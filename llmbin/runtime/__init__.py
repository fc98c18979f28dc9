"""Running a packed model: the decode engine and its parts (sampling, prompts, grouped attention, the screened
greedy head), and the speed benchmarks of kernels and of whole-model decoding."""
