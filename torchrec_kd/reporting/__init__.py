"""Results: metrics.json (``metrics_file``), honest comparisons across seeds (``summary``),
latency (``latency``) and the report: markdown, picture, TensorBoard (``report``)."""
