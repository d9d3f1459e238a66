"""Self-contained HTML pages: ``page`` (the frame and stylesheet), ``cases`` (every case, filterable
without script), ``charts`` (inline SVG), ``run`` (one run) and ``compare`` (two runs)."""
