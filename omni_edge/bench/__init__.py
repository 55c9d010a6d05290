"""omni-bench: per-engine latency, end-to-end latency, the PyTorch reference and the decode roofline.

    from omni_edge.bench import BenchConfig, run_bench, format_report
    report = run_bench(Path("build/tiny"), BenchConfig(iterations=50))

Figures are percentiles over timed iterations after warm-up; nothing here asserts a speed.
"""

from omni_edge.bench.report import format_report, write_plot
from omni_edge.bench.run import BenchConfig, run_bench

__all__ = ["BenchConfig", "format_report", "run_bench", "write_plot"]
