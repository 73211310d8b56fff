"""``python -m scope_optical_flow_tensorrt``: the ``scope-optical-flow`` command line."""

from .cli import main

raise SystemExit(main())
